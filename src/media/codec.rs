//! What a stream carries, independent of the protocol that brought it: the kind of a
//! track, the codec families Huddle forwards, one codec with the payload type its
//! source uses, and the codecs of a stream (at most one per kind).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    /// Index of per-kind arrays: audio 0, video 1.
    pub fn index(self) -> usize {
        match self {
            Kind::Audio => 0,
            Kind::Video => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// The codec families Huddle forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// H.264 packetization-mode 1; `profile_idc` and the constraint flags byte.
    H264 {
        profile: u8,
        constraints: u8,
    },
    Vp8,
    Opus,
    Pcmu,
    Pcma,
}

impl Family {
    pub fn kind(self) -> Kind {
        match self {
            Family::H264 { .. } | Family::Vp8 => Kind::Video,
            Family::Opus | Family::Pcmu | Family::Pcma => Kind::Audio,
        }
    }

    pub fn name(self) -> String {
        match self {
            Family::H264 {
                profile,
                constraints,
            } => format!("H264 {profile:02x}{constraints:02x}"),
            Family::Vp8 => "VP8".into(),
            Family::Opus => "opus".into(),
            Family::Pcmu => "PCMU".into(),
            Family::Pcma => "PCMA".into(),
        }
    }

    /// Constrained baseline (profile 66 with constraint_set1): what every browser decodes.
    pub fn is_constrained_baseline(self) -> bool {
        matches!(self, Family::H264 { profile: 66, constraints } if constraints & 0x40 != 0)
    }
}

/// One codec as a peer names it: its payload type and SDP parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub family: Family,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
}

/// The codecs of one peer connection: at most one per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chosen {
    pub audio: Option<Codec>,
    pub video: Option<Codec>,
}

impl Chosen {
    pub fn get(&self, kind: Kind) -> Option<&Codec> {
        match kind {
            Kind::Audio => self.audio.as_ref(),
            Kind::Video => self.video.as_ref(),
        }
    }

    pub fn describe(&self) -> String {
        let name = |c: &Option<Codec>| c.as_ref().map_or("-".into(), |c| c.family.name());
        format!("video {}, audio {}", name(&self.video), name(&self.audio))
    }
}
