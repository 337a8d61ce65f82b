//! The device's camera and microphone switched off and on at run time
//! (`Device::control`, the admin API's handle), with the test-pattern camera and the
//! tone microphone feeding a `SourceFeed` the test reads: off, the source is closed,
//! announced gone ("Camera switched off") and delivers nothing, and its state says
//! off; on, it opens again and delivers like a camera that came back. Capture on
//! demand (`DeviceControl::set_demand`): idle, both are closed; needed again, the
//! device's state comes back once, with both.

use std::time::{Duration, Instant};

use huddle::config::Config;
use huddle::device::Device;
use huddle::media::Kind;
use huddle::sfu::task::{SourceFeed, SourceInput};
use tokio::sync::mpsc;

fn device_config(camera: &str, microphone: &str) -> huddle::config::Device {
    let mut c = Config::default().device;
    c.camera = camera.into();
    c.microphone = microphone.into();
    c.width = 320;
    c.height = 240;
    c.framerate = 15;
    c.bitrate_kbps = 300;
    // These tests switch the sources themselves; the demand has its own test.
    c.always_on = true;
    c
}

/// The source's inputs until `until` holds for one of them (within `limit`): the
/// packets seen per kind on the way.
async fn until(
    inputs: &mut mpsc::Receiver<SourceInput>,
    limit: Duration,
    what: &str,
    mut until: impl FnMut(&SourceInput) -> bool,
) -> (usize, usize) {
    let deadline = Instant::now() + limit;
    let (mut audio, mut video) = (0, 0);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let input = tokio::time::timeout(left, inputs.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
            .expect("the feed is open");
        if let SourceInput::Packet(kind, _) = &input {
            match kind {
                Kind::Audio => audio += 1,
                Kind::Video => video += 1,
            }
        }
        if until(&input) {
            return (audio, video);
        }
    }
}

/// Counts the packets per kind arriving for `time`.
async fn packets_for(inputs: &mut mpsc::Receiver<SourceInput>, time: Duration) -> (usize, usize) {
    let deadline = tokio::time::Instant::now() + time;
    let (mut audio, mut video) = (0, 0);
    while let Ok(Some(input)) = tokio::time::timeout_at(deadline, inputs.recv()).await {
        if let SourceInput::Packet(kind, _) = input {
            match kind {
                Kind::Audio => audio += 1,
                Kind::Video => video += 1,
            }
        }
    }
    (audio, video)
}

fn state_with(video: bool, audio: bool) -> impl FnMut(&SourceInput) -> bool {
    move |input| {
        matches!(input, SourceInput::State { audio: a, video: v, .. }
            if a.is_some() == audio && v.is_some() == video)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_the_camera_and_microphone_switch_off_and_on() {
    let (feed, mut inputs, _key_frames) = SourceFeed::channel();
    let cfg = device_config("test-pattern", "tone");
    let device = tokio::task::spawn_blocking(move || Device::start(&cfg, feed, None))
        .await
        .unwrap()
        .expect("a device with a camera and a microphone");
    let control = device.control();
    until(
        &mut inputs,
        Duration::from_secs(20),
        "camera and microphone up",
        state_with(true, true),
    )
    .await;
    let view = control.state();
    let camera = view.camera.clone().unwrap();
    let microphone = view.microphone.clone().unwrap();
    assert_eq!(camera.configured, "test-pattern");
    assert_eq!(microphone.configured, "tone");
    assert!(
        camera.on && camera.delivering && camera.info.is_none(),
        "{view:?}"
    );
    assert!(
        camera
            .device
            .as_deref()
            .is_some_and(|d| d.contains("test-pattern")),
        "{view:?}"
    );
    assert!(microphone.on && microphone.delivering, "{view:?}");

    // Camera off: announced gone with the reason, no more video, audio goes on.
    let view = control.set(Some(false), None).unwrap();
    assert!(!view.camera.unwrap().on);
    let mut info = String::new();
    until(
        &mut inputs,
        Duration::from_secs(5),
        "the camera announced off",
        |i| match i {
            SourceInput::State {
                audio: Some(_),
                video: None,
                info: why,
            } => {
                info = why.clone();
                true
            }
            _ => false,
        },
    )
    .await;
    assert_eq!(info, "Camera switched off");
    // Packets already queued may still come; then none.
    packets_for(&mut inputs, Duration::from_millis(300)).await;
    let (audio, video) = packets_for(&mut inputs, Duration::from_secs(1)).await;
    assert_eq!(video, 0, "no video while the camera is off");
    assert!(audio > 10, "the microphone goes on ({audio} packets)");
    let camera = control.state().camera.unwrap();
    assert!(
        !camera.on && !camera.delivering && camera.device.is_none(),
        "{camera:?}"
    );
    assert_eq!(camera.info.as_deref(), Some("Camera switched off"));

    // Microphone off too: the device delivers nothing.
    control.set(None, Some(false)).unwrap();
    until(
        &mut inputs,
        Duration::from_secs(5),
        "both off",
        state_with(false, false),
    )
    .await;
    packets_for(&mut inputs, Duration::from_millis(300)).await;
    assert_eq!(
        packets_for(&mut inputs, Duration::from_secs(1)).await,
        (0, 0)
    );
    let view = control.state();
    assert!(!view.microphone.as_ref().unwrap().delivering, "{view:?}");

    // Both on again: they come back like sources that reappeared.
    control.set(Some(true), Some(true)).unwrap();
    until(
        &mut inputs,
        Duration::from_secs(20),
        "both back",
        state_with(true, true),
    )
    .await;
    let (audio, video) = packets_for(&mut inputs, Duration::from_secs(1)).await;
    assert!(audio > 10 && video > 3, "audio {audio} video {video}");
    let view = control.state();
    assert!(
        view.camera.as_ref().unwrap().on && view.camera.as_ref().unwrap().delivering,
        "{view:?}"
    );
    assert!(view.microphone.as_ref().unwrap().delivering, "{view:?}");
    assert!(device.check().is_ok());
    tokio::task::spawn_blocking(move || device.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_a_source_that_is_not_configured_cannot_be_switched() {
    let (feed, mut inputs, _key_frames) = SourceFeed::channel();
    let cfg = device_config("none", "tone");
    let device = tokio::task::spawn_blocking(move || Device::start(&cfg, feed, None))
        .await
        .unwrap()
        .expect("a device with a microphone");
    let control = device.control();
    assert!(control.state().camera.is_none());
    assert_eq!(
        control.set(Some(true), None).unwrap_err(),
        "no camera configured"
    );
    // Refused as a whole: the microphone was not switched either.
    assert!(control.set(Some(false), Some(false)).is_err());
    assert!(control.state().microphone.unwrap().on);
    until(
        &mut inputs,
        Duration::from_secs(10),
        "the microphone up",
        state_with(false, true),
    )
    .await;
    tokio::task::spawn_blocking(move || device.stop())
        .await
        .unwrap();
}

/// The next state the feed announces (packets on the way are skipped): (audio, video).
async fn next_state(inputs: &mut mpsc::Receiver<SourceInput>, limit: Duration) -> (bool, bool) {
    let mut state = (false, false);
    until(inputs, limit, "a state", |i| match i {
        SourceInput::State { audio, video, .. } => {
            state = (audio.is_some(), video.is_some());
            true
        }
        _ => false,
    })
    .await;
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_idle_closes_both_and_resuming_brings_them_back_together() {
    let (feed, mut inputs, _key_frames) = SourceFeed::channel();
    let mut cfg = device_config("test-pattern", "tone");
    cfg.always_on = false;
    let device = tokio::task::spawn_blocking(move || Device::start(&cfg, feed, None))
        .await
        .unwrap()
        .expect("a device with a camera and a microphone");
    let control = device.control();
    // Not needed from the start: nothing opens, nothing is delivered.
    assert_eq!(
        next_state(&mut inputs, Duration::from_secs(5)).await,
        (false, false)
    );
    assert_eq!(
        packets_for(&mut inputs, Duration::from_secs(1)).await,
        (0, 0)
    );
    let view = control.state();
    assert!(view.idle, "{view:?}");
    for source in [
        view.camera.as_ref().unwrap(),
        view.microphone.as_ref().unwrap(),
    ] {
        assert!(
            source.on && !source.capturing && !source.delivering,
            "{view:?}"
        );
        assert_eq!(source.frames, 0);
        assert_eq!(source.info.as_deref(), Some("Idle: nobody to send to"));
    }

    for round in 0..2 {
        // Needed: the first state has both (no audio-only state first).
        let asked = Instant::now();
        control.set_demand(true);
        assert_eq!(
            next_state(&mut inputs, Duration::from_secs(10)).await,
            (true, true),
            "round {round}"
        );
        let up = asked.elapsed();
        let (audio, video) = packets_for(&mut inputs, Duration::from_secs(1)).await;
        assert!(audio > 10 && video > 3, "audio {audio} video {video}");
        let view = control.state();
        assert!(!view.idle);
        let camera = view.camera.clone().unwrap();
        let microphone = view.microphone.clone().unwrap();
        assert!(
            camera.capturing && camera.delivering && camera.frames > 3,
            "{view:?}"
        );
        assert!(microphone.capturing && microphone.frames > 10, "{view:?}");
        eprintln!(
            "round {round}: both up {} ms after the demand",
            up.as_millis()
        );

        // Not needed: one state with neither, then nothing; the counts stand still.
        control.set_demand(false);
        assert_eq!(
            next_state(&mut inputs, Duration::from_secs(5)).await,
            (false, false)
        );
        packets_for(&mut inputs, Duration::from_millis(300)).await;
        let before = control.state();
        assert_eq!(
            packets_for(&mut inputs, Duration::from_secs(1)).await,
            (0, 0)
        );
        let after = control.state();
        assert!(
            after.idle && !after.camera.as_ref().unwrap().capturing,
            "{after:?}"
        );
        assert_eq!(
            before.camera.unwrap().frames,
            after.camera.as_ref().unwrap().frames
        );
        assert_eq!(
            before.microphone.unwrap().frames,
            after.microphone.as_ref().unwrap().frames
        );
    }

    // Switched off by the admin while idle, the camera stays off when needed again:
    // the device comes back with the microphone alone, at once.
    control.set(Some(false), None).unwrap();
    control.set_demand(true);
    assert_eq!(
        next_state(&mut inputs, Duration::from_secs(10)).await,
        (true, false)
    );
    let camera = control.state().camera.unwrap();
    assert!(!camera.capturing, "{camera:?}");
    assert_eq!(camera.info.as_deref(), Some("Camera switched off"));
    assert!(device.check().is_ok());
    tokio::task::spawn_blocking(move || device.stop())
        .await
        .unwrap();
}
