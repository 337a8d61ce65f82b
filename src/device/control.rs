//! Switching the device's camera and microphone on and off at run time (the admin
//! API), and their state.
//!
//! Each capture thread owns a `Switch`: the admin API flips its `on` flag and the
//! thread, coming round its loop (at least every poll interval), closes or reopens
//! its source. The thread writes what it is doing into the switch's small status
//! (a few short strings, under a lock held only to copy them), so neither side ever
//! waits on the other for long, and the state stays bounded.
//!
//! Capture also follows the demand (`set_demand`, from the driver's
//! `device::demand::Demand`): a source captures while it is switched on AND the
//! device is needed. Idle, its thread closes it exactly as when switched off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::media::Kind;

/// One capture source as the admin API shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceView {
    /// What `[device] camera` / `microphone` names ("auto", "/dev/video0", "tone"...).
    pub configured: String,
    /// What is in use now ("/dev/video0", "test-pattern", "hw:1,0"), if anything.
    pub device: Option<String>,
    /// Switched on (the default) or off by the admin API.
    pub on: bool,
    /// Delivering media now.
    pub delivering: bool,
    /// Open now (a camera's light is on).
    pub capturing: bool,
    /// Frames delivered since the service started (video access units, audio frames).
    pub frames: u64,
    /// Why it delivers nothing, when it does not.
    pub info: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceView {
    /// Nothing needs the camera and microphone now (nobody to send to, no push, no
    /// recording): they are closed until something does.
    pub idle: bool,
    pub camera: Option<SourceView>,
    pub microphone: Option<SourceView>,
}

/// What a capture thread last reported.
#[derive(Debug, Clone, Default)]
struct Status {
    device: Option<String>,
    delivering: bool,
    info: Option<String>,
}

/// The on/off switch of one source and what its thread reports.
#[derive(Debug)]
pub(crate) struct Switch {
    configured: String,
    on: AtomicBool,
    /// The source is open.
    capturing: AtomicBool,
    /// Frames delivered (video access units, audio frames).
    frames: AtomicU64,
    status: Mutex<Status>,
}

impl Switch {
    pub(crate) fn new(configured: String) -> Switch {
        Switch {
            configured,
            on: AtomicBool::new(true),
            capturing: AtomicBool::new(false),
            frames: AtomicU64::new(0),
            status: Mutex::new(Status {
                info: Some("Starting".into()),
                ..Status::default()
            }),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The thread opened (`true`) or closed its source.
    pub(crate) fn set_capturing(&self, capturing: bool) {
        self.capturing.store(capturing, Ordering::Relaxed);
    }

    /// `n` more frames delivered.
    pub(crate) fn count_frames(&self, n: u64) {
        self.frames.fetch_add(n, Ordering::Relaxed);
    }

    /// The thread's report: the device in use (if open), delivering, and why not.
    pub(crate) fn report(&self, device: Option<String>, delivering: bool, info: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *s = Status {
            device,
            delivering,
            info,
        };
    }

    fn view(&self) -> SourceView {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        SourceView {
            configured: self.configured.clone(),
            device: s.device,
            on: self.is_on(),
            delivering: s.delivering,
            capturing: self.capturing.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            info: s.info,
        }
    }
}

/// A handle on the running capture threads; cheap to clone.
#[derive(Clone, Default)]
pub struct DeviceControl {
    camera: Option<Arc<Switch>>,
    microphone: Option<Arc<Switch>>,
    /// The capture threads' common state, where the demand is kept.
    shared: Option<Arc<super::Shared>>,
}

impl DeviceControl {
    pub(crate) fn set_shared(&mut self, shared: Arc<super::Shared>) {
        self.shared = Some(shared);
    }

    /// Whether the sources are needed (`device::demand::Demand`): not needed, they
    /// close (as when switched off, but the admin's switches stay as they are) until
    /// needed again; then the device's stream comes up once both have made their
    /// first attempt. Answers at once; the threads follow within a poll interval.
    pub fn set_demand(&self, needed: bool) {
        if let Some(shared) = &self.shared {
            shared.set_demand(needed);
        }
    }

    /// Whether the sources are needed now.
    pub fn is_needed(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.is_needed())
    }

    pub(crate) fn add(&mut self, kind: Kind, switch: Arc<Switch>) {
        match kind {
            Kind::Video => self.camera = Some(switch),
            Kind::Audio => self.microphone = Some(switch),
        }
    }

    pub fn state(&self) -> DeviceView {
        DeviceView {
            idle: !self.is_needed(),
            camera: self.camera.as_ref().map(|s| s.view()),
            microphone: self.microphone.as_ref().map(|s| s.view()),
        }
    }

    /// Switches the camera and/or the microphone on (`Some(true)`) or off; `None`
    /// leaves it as it is. Off: the source is closed (a camera's light goes out) and
    /// the device's streams go on without it, as when a camera is unplugged. Answers
    /// at once: the capture thread follows within a poll interval.
    pub fn set(
        &self,
        camera: Option<bool>,
        microphone: Option<bool>,
    ) -> Result<DeviceView, String> {
        if camera.is_some() && self.camera.is_none() {
            return Err("no camera configured".into());
        }
        if microphone.is_some() && self.microphone.is_none() {
            return Err("no microphone configured".into());
        }
        for (switch, on) in [(&self.camera, camera), (&self.microphone, microphone)] {
            if let (Some(switch), Some(on)) = (switch, on) {
                switch.on.store(on, Ordering::Relaxed);
            }
        }
        Ok(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_that_is_not_configured_cannot_be_switched() {
        let mut control = DeviceControl::default();
        control.add(Kind::Audio, Arc::new(Switch::new("tone".into())));
        assert_eq!(
            control.set(Some(false), None).unwrap_err(),
            "no camera configured"
        );
        let view = control.set(None, Some(false)).unwrap();
        assert!(view.camera.is_none());
        let mic = view.microphone.unwrap();
        assert!(!mic.on);
        assert_eq!(mic.configured, "tone");
        assert!(
            control
                .set(None, Some(true))
                .unwrap()
                .microphone
                .unwrap()
                .on
        );
    }
}
