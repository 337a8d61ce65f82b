//! Switching the device's camera and microphone on and off at run time (the admin
//! API), and their state. TODO(device helper).

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
    /// Why it delivers nothing, when it does not.
    pub info: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceView {
    pub camera: Option<SourceView>,
    pub microphone: Option<SourceView>,
}

/// A handle on the running capture threads; cheap to clone.
#[derive(Clone, Default)]
pub struct DeviceControl {}

impl DeviceControl {
    pub fn state(&self) -> DeviceView {
        DeviceView::default()
    }

    /// Switches the camera and/or the microphone on (`Some(true)`) or off; `None`
    /// leaves it as it is. Off: the source is closed (a camera's light goes out) and
    /// the device's streams go on without it, as when a camera is unplugged.
    pub fn set(
        &self,
        _camera: Option<bool>,
        _microphone: Option<bool>,
    ) -> Result<DeviceView, String> {
        Err("not implemented yet".into())
    }
}
