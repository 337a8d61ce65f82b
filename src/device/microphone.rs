//! The device's microphone: ALSA capture (the `alsa` crate) or a generated tone,
//! 48 kHz mono in 20 ms frames, encoded to Opus (libopus through `audiopus`, in-band
//! FEC) and put into RTP for the SFU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Bitrate, Channels, SampleRate};
use bytes::Bytes;
use log::{debug, warn};

use super::camera::rand_u32;
use super::echo::EchoCanceller;
use super::h264::RtpPacket;
use super::Source;
use crate::config;
use crate::media::speaking::{level_of, set_level, LOCAL_LEVEL_ID};
use crate::media::{Codec, Family, Kind};

pub const RATE: u32 = 48_000;
/// Samples in one 20 ms Opus frame at 48 kHz.
pub const FRAME: usize = 960;
/// Dynamic payload type of the device's Opus.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Voice in a meeting room: 32 kbit/s mono leaves room for FEC.
const OPUS_BITRATE: i32 = 32_000;

/// Where 20 ms frames of 48 kHz mono samples come from.
pub trait Microphone: Send {
    fn name(&self) -> String;
    fn open(&mut self) -> Result<(), String>;
    /// Waits up to `timeout` for the next frame; `Ok(false)` when none came.
    fn read(&mut self, timeout: Duration, frame: &mut [i16; FRAME]) -> Result<bool, String>;
    fn close(&mut self);
}

/// The Opus description the device's audio is sent with.
pub fn opus_codec() -> Codec {
    Codec {
        family: Family::Opus,
        payload_type: OPUS_PAYLOAD_TYPE,
        clock_rate: RATE,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1".into(),
    }
}

/// A microphone as an RTP source of Opus packets.
pub struct AudioSource {
    microphone: Box<dyn Microphone>,
    encoder: Option<Encoder>,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    frame: Box<[i16; FRAME]>,
    encoded: Vec<u8>,
    /// Echo cancellation, noise suppression and gain control before encoding.
    echo: Option<Arc<EchoCanceller>>,
    /// The processing failed once (logged): frames go on unprocessed.
    echo_failed: bool,
    /// Each packet carries its frame's level (RFC 6464, `LOCAL_LEVEL_ID`): the
    /// room's active speaker can be the people in the room. Off for a generated tone
    /// (nobody talks; a steady tone would always be the speaker).
    levels: bool,
}

impl AudioSource {
    pub fn new(microphone: Box<dyn Microphone>) -> AudioSource {
        AudioSource::with_processing(microphone, None)
    }

    /// A microphone whose frames go through `echo` before they are encoded.
    pub fn with_processing(
        microphone: Box<dyn Microphone>,
        echo: Option<Arc<EchoCanceller>>,
    ) -> AudioSource {
        AudioSource {
            echo,
            echo_failed: false,
            levels: false,
            microphone,
            encoder: None,
            ssrc: rand_u32(),
            sequence: rand_u32() as u16,
            timestamp: rand_u32(),
            frame: Box::new([0; FRAME]),
            encoded: vec![0; 1500],
        }
    }
}

impl AudioSource {
    /// Puts each frame's level into its packet (after the echo canceller: what the
    /// room hears of the people in it).
    pub fn with_levels(mut self, on: bool) -> AudioSource {
        self.levels = on;
        self
    }
}

/// An Opus encoder for 48 kHz mono voice with in-band FEC.
pub fn encoder() -> Result<Encoder, String> {
    let mut e = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
        .map_err(|e| format!("Opus encoder: {e}"))?;
    let tune = |r: audiopus::Result<()>| r.map_err(|e| format!("Opus encoder: {e}"));
    tune(e.set_bitrate(Bitrate::BitsPerSecond(OPUS_BITRATE)))?;
    tune(e.set_inband_fec(true))?;
    // FEC is only spent when the encoder expects loss.
    tune(e.set_packet_loss_perc(10))?;
    Ok(e)
}

impl Source for AudioSource {
    fn name(&self) -> String {
        self.microphone.name()
    }

    fn kind(&self) -> Kind {
        Kind::Audio
    }

    fn open(&mut self) -> Result<(), String> {
        if self.encoder.is_none() {
            self.encoder = Some(encoder()?);
        }
        self.microphone.open()
    }

    fn poll(&mut self, timeout: Duration, out: &mut Vec<RtpPacket>) -> Result<bool, String> {
        if !self.microphone.read(timeout, &mut self.frame)? {
            return Ok(false);
        }
        if let (Some(echo), false) = (&self.echo, self.echo_failed) {
            if let Err(e) = echo.process(&mut self.frame[..]) {
                warn!(
                    "device: {}: {e}; going on without it",
                    self.microphone.name()
                );
                self.echo_failed = true;
            }
        }
        let Some(encoder) = &self.encoder else {
            return Err("Opus encoder missing".into());
        };
        let n = encoder
            .encode(&self.frame[..], &mut self.encoded)
            .map_err(|e| format!("Opus encoding: {e}"))?;
        let mut packet = RtpPacket::default();
        packet.header.version = 2;
        packet.header.payload_type = OPUS_PAYLOAD_TYPE;
        packet.header.sequence_number = self.sequence;
        packet.header.timestamp = self.timestamp;
        packet.header.ssrc = self.ssrc;
        packet.payload = Bytes::copy_from_slice(&self.encoded[..n]);
        if self.levels {
            set_level(
                &mut packet.header,
                LOCAL_LEVEL_ID,
                level_of(&self.frame[..]),
            );
        }
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME as u32);
        out.push(packet);
        Ok(true)
    }

    fn codec(&self) -> Option<Codec> {
        Some(opus_codec())
    }

    fn close(&mut self) {
        self.microphone.close();
    }
}

/// Whether the configured microphone is a sound card (not a generated tone): only
/// then does it hear the room, and its audio is processed.
pub fn is_real(cfg: &config::Device) -> bool {
    match cfg.microphone.as_str() {
        "none" | "tone" => false,
        "auto" => capture_card_exists(),
        _ => true,
    }
}

/// The microphone of this configuration (`None` for "none"), its frames processed by
/// `echo` when it is a sound card.
pub fn from_config(
    cfg: &config::Device,
    echo: Option<Arc<EchoCanceller>>,
) -> Option<Box<dyn Source>> {
    let echo = echo.filter(|_| is_real(cfg));
    let microphone: Box<dyn Microphone> = match cfg.microphone.as_str() {
        "none" => return None,
        "tone" => Box::new(Tone::new(440.0, 0.1)),
        "auto" if !capture_card_exists() => {
            debug!("device: no ALSA card, the microphone is a tone");
            Box::new(Tone::new(440.0, 0.1))
        }
        "auto" => Box::new(AlsaMicrophone::new("default".into())),
        pcm => Box::new(AlsaMicrophone::new(pcm.to_owned())),
    };
    Some(Box::new(
        AudioSource::with_processing(microphone, echo).with_levels(is_real(cfg)),
    ))
}

fn capture_card_exists() -> bool {
    alsa::card::Iter::new().next().is_some()
}

// ----- a generated tone ---------------------------------------------------------

/// A sine tone in real time (for machines without a microphone).
pub struct Tone {
    frequency: f64,
    amplitude: f64,
    phase: f64,
    next: Option<Instant>,
}

impl Tone {
    /// `amplitude` is a fraction of full scale.
    pub fn new(frequency: f64, amplitude: f64) -> Tone {
        Tone {
            frequency,
            amplitude,
            phase: 0.0,
            next: None,
        }
    }
}

impl Microphone for Tone {
    fn name(&self) -> String {
        format!("microphone tone ({} Hz)", self.frequency)
    }

    fn open(&mut self) -> Result<(), String> {
        self.next = Some(Instant::now());
        Ok(())
    }

    fn read(&mut self, timeout: Duration, frame: &mut [i16; FRAME]) -> Result<bool, String> {
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            if due - now > timeout {
                std::thread::sleep(timeout);
                return Ok(false);
            }
            std::thread::sleep(due - now);
        }
        // Paced like a sound card: one frame every 20 ms, catching up after a pause
        // only by a frame at a time.
        self.next = Some(due.max(now - Duration::from_millis(100)) + Duration::from_millis(20));
        let step = std::f64::consts::TAU * self.frequency / f64::from(RATE);
        for s in frame.iter_mut() {
            *s = (self.phase.sin() * self.amplitude * f64::from(i16::MAX)) as i16;
            self.phase = (self.phase + step) % std::f64::consts::TAU;
        }
        Ok(true)
    }

    fn close(&mut self) {
        self.next = None;
    }
}

// ----- ALSA ---------------------------------------------------------------------

/// What to do after an ALSA read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Overrun or suspend: `snd_pcm_recover` and go on.
    Recover,
    /// The device is gone or broken: close, back off, reopen.
    Reopen,
}

/// Overruns (EPIPE), suspends (ESTRPIPE) and interrupted calls are recovered in
/// place; anything else (ENODEV after an unplug, EBADFD, EIO) reopens the device.
pub fn recovery_for(errno: i32) -> Recovery {
    match errno.abs() {
        libc_errno::EPIPE | libc_errno::ESTRPIPE | libc_errno::EINTR => Recovery::Recover,
        _ => Recovery::Reopen,
    }
}

mod libc_errno {
    pub const EINTR: i32 = nix::errno::Errno::EINTR as i32;
    pub const EPIPE: i32 = nix::errno::Errno::EPIPE as i32;
    pub const ESTRPIPE: i32 = nix::errno::Errno::ESTRPIPE as i32;
}

/// An ALSA capture PCM (`hw:1,0`, `plughw:CARD=...`, `default`, or a plugin).
pub struct AlsaMicrophone {
    pcm_name: String,
    pcm: Option<alsa::pcm::PCM>,
    channels: usize,
    /// Interleaved samples of one frame as read.
    raw: Vec<i16>,
    xruns: u64,
}

impl AlsaMicrophone {
    pub fn new(pcm_name: String) -> AlsaMicrophone {
        AlsaMicrophone {
            pcm_name,
            pcm: None,
            channels: 1,
            raw: Vec::new(),
            xruns: 0,
        }
    }

    /// Overruns recovered since the last open.
    pub fn xruns(&self) -> u64 {
        self.xruns
    }
}

impl Microphone for AlsaMicrophone {
    fn name(&self) -> String {
        format!("microphone {}", self.pcm_name)
    }

    fn open(&mut self) -> Result<(), String> {
        self.close();
        let (pcm, channels) = open_pcm(&self.pcm_name, alsa::Direction::Capture, FRAME, 4 * FRAME)?;
        self.channels = channels;
        pcm.start().or_else(|e| {
            // Capture also starts by itself on the first read.
            debug!("{}: start: {e}", self.pcm_name);
            Ok::<(), String>(())
        })?;
        self.raw = vec![0; FRAME * self.channels];
        self.xruns = 0;
        self.pcm = Some(pcm);
        Ok(())
    }

    fn read(&mut self, timeout: Duration, frame: &mut [i16; FRAME]) -> Result<bool, String> {
        let Some(pcm) = &self.pcm else {
            return Err("not open".into());
        };
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        match pcm.wait(Some(ms)) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => return recover(pcm, e, &mut self.xruns, &self.pcm_name),
        }
        let io = pcm.io_i16().map_err(|e| e.to_string())?;
        let mut filled = 0;
        // Period-sized reads; a short read (signal, overrun) continues where it stopped.
        while filled < FRAME {
            let at = filled * self.channels;
            match io.readi(&mut self.raw[at..]) {
                Ok(0) => return Ok(false),
                Ok(n) => filled += n,
                Err(e) => return recover(pcm, e, &mut self.xruns, &self.pcm_name),
            }
        }
        downmix(&self.raw, self.channels, frame);
        Ok(true)
    }

    fn close(&mut self) {
        if let Some(pcm) = self.pcm.take() {
            let _ = pcm.drop();
        }
    }
}

/// Opens an ALSA PCM for 48 kHz S16 interleaved, mono if it can (the channel count it
/// took is returned), with about this period and buffer (frames). Shared by the
/// microphone and the speaker.
pub(crate) fn open_pcm(
    name: &str,
    direction: alsa::Direction,
    period: usize,
    buffer: usize,
) -> Result<(alsa::pcm::PCM, usize), String> {
    use alsa::pcm::{Access, Format, HwParams, PCM};
    use alsa::ValueOr;
    let pcm = PCM::new(name, direction, false).map_err(|e| e.to_string())?;
    {
        let hw = HwParams::any(&pcm).map_err(|e| format!("hw params: {e}"))?;
        let step = |what: &str, r: alsa::Result<()>| r.map_err(|e| format!("{what}: {e}"));
        step("access", hw.set_access(Access::RWInterleaved))?;
        step("format S16_LE", hw.set_format(Format::s16()))?;
        step("rate 48000", hw.set_rate(RATE, ValueOr::Nearest))?;
        hw.set_channels_near(1)
            .map_err(|e| format!("channels: {e}"))?;
        hw.set_period_size_near(period as alsa::pcm::Frames, ValueOr::Nearest)
            .map_err(|e| format!("period: {e}"))?;
        hw.set_buffer_size_near(buffer as alsa::pcm::Frames)
            .map_err(|e| format!("buffer: {e}"))?;
        step("hw params", pcm.hw_params(&hw))?;
    }
    let channels = {
        let current = pcm
            .hw_params_current()
            .map_err(|e| format!("hw params: {e}"))?;
        let rate = current.get_rate().map_err(|e| e.to_string())?;
        if rate != RATE {
            let verb = match direction {
                alsa::Direction::Capture => "captures",
                alsa::Direction::Playback => "plays",
            };
            return Err(format!(
                "{verb} at {rate} Hz, not 48000 (use a plughw: device)"
            ));
        }
        current.get_channels().map_err(|e| e.to_string())?.max(1) as usize
    };
    Ok((pcm, channels))
}

/// After an ALSA error: an overrun or suspend is recovered in place (`Ok(false)`: no
/// frame this time), anything else is the caller's failure.
fn recover(
    pcm: &alsa::pcm::PCM,
    e: alsa::Error,
    xruns: &mut u64,
    pcm_name: &str,
) -> Result<bool, String> {
    if recovery_for(e.errno()) == Recovery::Reopen {
        return Err(e.to_string());
    }
    *xruns += 1;
    if xruns.is_power_of_two() {
        warn!("{pcm_name}: overrun #{xruns}, recovering");
    }
    pcm.try_recover(e, true)
        .map_err(|e| format!("recovering: {e}"))?;
    Ok(false)
}

/// Interleaved `channels`-channel samples to mono (the mean of the channels).
pub fn downmix(raw: &[i16], channels: usize, out: &mut [i16; FRAME]) {
    if channels <= 1 {
        out.copy_from_slice(&raw[..FRAME]);
        return;
    }
    for (o, chunk) in out.iter_mut().zip(raw.chunks_exact(channels)) {
        let sum: i32 = chunk.iter().map(|&s| i32::from(s)).sum();
        *o = (sum / channels as i32) as i16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overruns_are_recovered_in_place_and_unplugs_reopen() {
        use nix::errno::Errno;
        for (errno, want) in [
            (-(Errno::EPIPE as i32), Recovery::Recover),
            (Errno::ESTRPIPE as i32, Recovery::Recover),
            (Errno::ENODEV as i32, Recovery::Reopen),
            (Errno::EBADFD as i32, Recovery::Reopen),
            (Errno::EIO as i32, Recovery::Reopen),
        ] {
            assert_eq!(recovery_for(errno), want, "errno {errno}");
        }
    }

    #[test]
    fn downmix_averages_the_channels() {
        let raw: Vec<i16> = (0..FRAME)
            .flat_map(|i| [i as i16, -(i as i16) + 100])
            .collect();
        let mut out = [0i16; FRAME];
        downmix(&raw, 2, &mut out);
        assert!(out.iter().all(|&s| s == 50));
        let mono: Vec<i16> = (0..FRAME as i16).collect();
        downmix(&mono, 1, &mut out);
        assert_eq!(out[959], 959);
    }

    #[test]
    fn the_tone_is_paced_in_real_time() {
        let mut t = Tone::new(1000.0, 0.5);
        t.open().unwrap();
        let mut frame = [0i16; FRAME];
        let start = Instant::now();
        let mut got = 0;
        while got < 5 {
            if t.read(Duration::from_millis(100), &mut frame).unwrap() {
                got += 1;
            }
        }
        // Five frames are 100 ms of sound: the first is due at once.
        assert!(start.elapsed() >= Duration::from_millis(80));
        let peak = frame.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((16_000..=16_384).contains(&peak), "peak {peak}");
    }
}
