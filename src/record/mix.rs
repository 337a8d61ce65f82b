//! The offline mix of a recorded room: one H.264 + AAC MP4 (`<dir>/<mix_file>`) with a
//! grid of the video streams present at each moment (the layout follows participants
//! as they come and go), each tile labelled with its login, and the audio of every
//! stream mixed, made by the `ffmpeg` CLI at idle priority once the room is finalized.
//!
//! Why ffmpeg (and not GStreamer in-process): measured on the target class of machine
//! (shared-recipes rtmp-recording §4), `ffmpeg -preset ultrafast` mixes at 2.0-2.6x
//! real time against 1.6x for the equivalent GStreamer pipeline; ffmpeg offsets late
//! joiners with timestamps in one filter graph (GStreamer needs pad offsets in code),
//! and a separate process can be run under `nice -n 19` + SCHED_IDLE, bounded by a
//! timeout and killed without touching the media server.
//!
//! The filter graph (`build_graph`, pure):
//! - the room's timeline is cut into intervals where the set of streams with video is
//!   constant (`intervals`); each interval gets a grid (`grid`, `tiles`: 1 → full frame,
//!   2 → side by side, 3-4 → 2x2, 5-6 → 3x2, 7-9 → 3x3, more → ⌈√n⌉ columns);
//! - every input's video is shifted onto the room's timeline (`setpts=PTS+shift/TB`),
//!   split once per distinct tile size it takes (at most a handful, not once per
//!   interval: every branch processes every frame), scaled with its aspect kept and
//!   padded, labelled (`drawtext`, text escaped for both filter-syntax levels), and
//!   overlaid on a black background of the room's duration with `x`/`y` as piecewise
//!   expressions of `t` and `enable` = the union of its intervals. All branches of one
//!   input share its timeline, so no branch reads ahead of the others (a `trim` start
//!   would make the overlay read ahead and buffer the other branches' frames);
//! - audio: per input `asetpts=PTS+shift/TB,aresample=async=1:first_pts=0` (silence
//!   from 0 to the join and over gaps: without it `amix` mixes a late joiner from
//!   t=0), `amix normalize=0`, padded to the room's duration.
//!
//! The shift of an input is `start_ms` minus the file's own start time, the same for
//! its audio and video, so the A/V sync of each file is kept.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};

use super::catalog::{self, MixState, RecordKind, RecordMeta, RoomManifest};
use super::hook::{self, Waited};
use crate::config;

/// The label font (Debian `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One stretch of the room's timeline with the same streams present (indices into the
/// spans given to `intervals`, in their order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub start_ms: u64,
    pub end_ms: u64,
    pub present: Vec<usize>,
}

/// Cuts `[0, duration_ms)` where the set of present spans (`[start, end)`, in ms)
/// changes; stretches where nobody is present are left out, neighbours with the same
/// set are merged.
pub fn intervals(spans: &[(u64, u64)], duration_ms: u64) -> Vec<Interval> {
    let clamp = |&(s, e): &(u64, u64)| (s.min(duration_ms), e.min(duration_ms));
    let mut cuts: Vec<u64> = spans
        .iter()
        .map(clamp)
        .filter(|(s, e)| s < e)
        .flat_map(|(s, e)| [s, e])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<Interval> = Vec::new();
    for pair in cuts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let present: Vec<usize> = spans
            .iter()
            .map(clamp)
            .enumerate()
            .filter(|(_, (s, e))| *s <= a && b <= *e)
            .map(|(i, _)| i)
            .collect();
        if present.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end_ms == a && last.present == present => last.end_ms = b,
            _ => out.push(Interval {
                start_ms: a,
                end_ms: b,
                present,
            }),
        }
    }
    out
}

/// Columns and rows of the grid for `n` tiles.
pub fn grid(n: usize) -> (u32, u32) {
    match n {
        0 | 1 => (1, 1),
        2 => (2, 1),
        3 | 4 => (2, 2),
        5 | 6 => (3, 2),
        7..=9 => (3, 3),
        _ => {
            let mut cols = 1;
            while cols * cols < n {
                cols += 1;
            }
            (cols as u32, n.div_ceil(cols) as u32)
        }
    }
}

/// One tile's place in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// The tiles of an `n`-tile grid in a `width`x`height` frame, row by row; sizes are even
/// (for 4:2:0), an incomplete last row is centered.
pub fn tiles(n: usize, width: u32, height: u32) -> Vec<Tile> {
    let (cols, rows) = grid(n);
    let w = (width / cols) & !1;
    let h = (height / rows) & !1;
    let x0 = (width - w * cols) / 2;
    let y0 = (height - h * rows) / 2;
    (0..n)
        .map(|i| {
            let (col, row) = (i as u32 % cols, i as u32 / cols);
            let in_row = (n as u32 - row * cols).min(cols);
            let centering = (cols - in_row) * w / 2;
            Tile {
                x: (x0 + centering + col * w) & !1,
                y: y0 + row * h,
                w,
                h,
            }
        })
        .collect()
}

/// Escapes a value for a filter option (first level: `\`, `'`, `:`) and then for the
/// filter graph (second level: `\`, `'`, `[`, `]`, `,`, `;`). Control characters
/// become spaces.
pub fn escape_value(text: &str) -> String {
    let chars: Vec<char> = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let lead = chars.iter().take_while(|c| **c == ' ').count();
    let trail = chars.iter().rev().take_while(|c| **c == ' ').count();
    let mut first = String::with_capacity(text.len() * 2);
    for (i, &c) in chars.iter().enumerate() {
        // Spaces at either end would be trimmed by the option parser.
        let edge_space = c == ' ' && (i < lead || i >= chars.len() - trail);
        if matches!(c, '\\' | '\'' | ':') || edge_space {
            first.push('\\');
        }
        first.push(c);
    }
    let mut second = String::with_capacity(first.len() * 2);
    for c in first.chars() {
        if matches!(c, '\\' | '\'' | '[' | ']' | ',' | ';') {
            second.push('\\');
        }
        second.push(c);
    }
    second
}

/// `ms` as seconds for a filter expression (`3.000`, `-0.007`).
fn secs(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// `PTS+3.000/TB`, `PTS-0.007/TB`: timestamps shifted by `ms`.
fn pts_plus(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let abs = ms.unsigned_abs();
    format!("PTS{sign}{}.{:03}/TB", abs / 1000, abs % 1000)
}

/// One usable input file of the mix, in the order of the `-i` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixInput {
    pub login: String,
    /// Added to the file's timestamps to put them on the room's timeline (ms).
    pub shift_ms: i64,
    /// Where its video is on the room's timeline (`[start, end)` ms); `None`: no video.
    pub video: Option<(u64, u64)>,
    pub audio: bool,
}

/// What the mix is to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSpec {
    pub width: u32,
    pub height: u32,
    pub frame_rate: u32,
    pub duration_ms: u64,
    pub video: bool,
    pub audio: bool,
    /// The label font; `None`: no labels.
    pub font: Option<PathBuf>,
}

/// A `-filter_complex` script and its output pads (`-map "[vout]"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub script: String,
    pub video_out: Option<String>,
    pub audio_out: Option<String>,
}

/// A tile's place over one interval: (start ms, end ms, x, y).
type Placement = (u64, u64, u32, u32);

/// `gte(t,a)*lt(t,b)+...` over `ranges`.
fn union_expr(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|&(a, b)| format!("gte(t,{})*lt(t,{})", secs(a as i64), secs(b as i64)))
        .collect::<Vec<_>>()
        .join("+")
}

/// A coordinate that is `v` over each range: a constant when it never changes.
fn piecewise_expr(values: &[(u64, u64, u32)]) -> String {
    let first = values.first().map_or(0, |v| v.2);
    if values.iter().all(|v| v.2 == first) {
        return first.to_string();
    }
    let terms: Vec<String> = values
        .iter()
        .filter(|v| v.2 != 0)
        .map(|&(a, b, v)| format!("{v}*gte(t,{})*lt(t,{})", secs(a as i64), secs(b as i64)))
        .collect();
    if terms.is_empty() {
        "0".into()
    } else {
        format!("'{}'", terms.join("+"))
    }
}

/// The filter graph of a mix (see the module doc). Inputs without a video span or
/// without audio only take part where they have it.
pub fn build_graph(inputs: &[MixInput], spec: &GraphSpec) -> Graph {
    let mut lines: Vec<String> = Vec::new();
    let mut video_out = None;
    let mut audio_out = None;
    let duration = secs(spec.duration_ms as i64);
    if spec.video {
        lines.push(format!(
            "color=c=black:s={}x{}:r={}:d={duration}[bg]",
            spec.width, spec.height, spec.frame_rate
        ));
        let with_video: Vec<(usize, (u64, u64))> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, input)| input.video.map(|span| (i, span)))
            .collect();
        let spans: Vec<(u64, u64)> = with_video.iter().map(|(_, span)| *span).collect();
        let cuts = intervals(&spans, spec.duration_ms);
        let mut last = "bg".to_string();
        let mut overlays = 0;
        for (k, &(input, _)) in with_video.iter().enumerate() {
            let mut sizes: Vec<((u32, u32), Vec<Placement>)> = Vec::new();
            for cut in &cuts {
                let Some(pos) = cut.present.iter().position(|&p| p == k) else {
                    continue;
                };
                let tile = tiles(cut.present.len(), spec.width, spec.height)[pos];
                let place = (cut.start_ms, cut.end_ms, tile.x, tile.y);
                match sizes.iter_mut().find(|(size, _)| *size == (tile.w, tile.h)) {
                    Some((_, places)) => places.push(place),
                    None => sizes.push(((tile.w, tile.h), vec![place])),
                }
            }
            if sizes.is_empty() {
                continue;
            }
            let shift = pts_plus(inputs[input].shift_ms);
            let branch = |j: usize| format!("v{input}s{j}");
            let mut line = format!("[{input}:v]setpts={shift}");
            if sizes.len() > 1 {
                line.push_str(&format!(",split={}", sizes.len()));
                for j in 0..sizes.len() {
                    line.push_str(&format!("[{}]", branch(j)));
                }
            } else {
                line.push_str(&format!("[{}]", branch(0)));
            }
            lines.push(line);
            let label = spec.font.as_ref().map(|font| {
                format!(
                    "fontfile={}:expansion=none:text={}",
                    escape_value(&font.to_string_lossy()),
                    escape_value(&inputs[input].login)
                )
            });
            for (j, ((w, h), places)) in sizes.iter().enumerate() {
                let mut line = format!(
                    "[{}]scale={w}:{h}:force_original_aspect_ratio=decrease,setsar=1",
                    branch(j)
                );
                if let Some(label) = &label {
                    let size = (h / 16).max(12);
                    let margin = (size / 2).max(4);
                    line.push_str(&format!(
                        ",drawtext={label}:fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.5:boxborderw={}:x={margin}:y=h-th-{margin}",
                        margin / 2
                    ));
                }
                let tile = format!("t{input}s{j}");
                line.push_str(&format!(
                    ",pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black[{tile}]"
                ));
                lines.push(line);
                let ranges: Vec<(u64, u64)> = places.iter().map(|p| (p.0, p.1)).collect();
                let xs: Vec<(u64, u64, u32)> = places.iter().map(|p| (p.0, p.1, p.2)).collect();
                let ys: Vec<(u64, u64, u32)> = places.iter().map(|p| (p.0, p.1, p.3)).collect();
                overlays += 1;
                let out = format!("o{overlays}");
                lines.push(format!(
                    "[{last}][{tile}]overlay=x={}:y={}:eof_action=pass:enable='{}'[{out}]",
                    piecewise_expr(&xs),
                    piecewise_expr(&ys),
                    union_expr(&ranges)
                ));
                last = out;
            }
        }
        lines.push(format!("[{last}]null[vout]"));
        video_out = Some("[vout]".to_string());
    }
    if spec.audio {
        let with_audio: Vec<usize> = inputs
            .iter()
            .enumerate()
            .filter(|(_, input)| input.audio)
            .map(|(i, _)| i)
            .collect();
        if !with_audio.is_empty() {
            let mut mix = String::new();
            for &i in &with_audio {
                let shift = pts_plus(inputs[i].shift_ms);
                lines.push(format!(
                    "[{i}:a]asetpts={shift},aresample=async=1:first_pts=0,aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo[a{i}]"
                ));
                mix.push_str(&format!("[a{i}]"));
            }
            if with_audio.len() > 1 {
                mix.push_str(&format!(
                    "amix=inputs={}:duration=longest:normalize=0:dropout_transition=0,",
                    with_audio.len()
                ));
            } else {
                mix.push_str("anull,");
            }
            mix.push_str(&format!("apad=whole_dur={duration}[aout]"));
            lines.push(mix);
            audio_out = Some("[aout]".to_string());
        }
    }
    Graph {
        script: lines.join(";\n"),
        video_out,
        audio_out,
    }
}

/// What `ffprobe` tells of a stream file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub video: bool,
    pub audio: bool,
    /// The file's first timestamp (ms).
    pub start_ms: i64,
    pub duration_ms: Option<u64>,
}

fn seconds_field(value: &serde_json::Value, key: &str) -> Option<f64> {
    value
        .get(key)?
        .as_str()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// Probes a file with `ffprobe` (bounded by 30 s).
pub fn probe(file: &Path) -> Result<Probe, String> {
    let mut command = Command::new("ffprobe");
    command
        .args(["-v", "error", "-show_entries"])
        .arg("format=start_time,duration:stream=codec_type")
        .args(["-of", "json"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|e| format!("ffprobe: {e}"))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut out) = out {
            let _ = out.read_to_end(&mut text);
        }
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut err) = err {
            let _ = err.read_to_string(&mut text);
        }
        text
    });
    let never = AtomicBool::new(false);
    let waited = hook::wait_bounded(&mut child, Duration::from_secs(30), &never);
    let text = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    match waited {
        Waited::Exited(status) if status.success() => {}
        Waited::Exited(status) => {
            return Err(format!("ffprobe {status}: {}", err.trim()));
        }
        _ => return Err("ffprobe timed out".into()),
    }
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("ffprobe output: {e}"))?;
    let kinds: Vec<&str> = json
        .get("streams")
        .and_then(|s| s.as_array())
        .map(|s| {
            s.iter()
                .filter_map(|s| s.get("codec_type").and_then(|c| c.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let format = json.get("format").cloned().unwrap_or_default();
    Ok(Probe {
        video: kinds.contains(&"video"),
        audio: kinds.contains(&"audio"),
        start_ms: seconds_field(&format, "start_time").map_or(0, |s| (s * 1000.0).round() as i64),
        duration_ms: seconds_field(&format, "duration")
            .filter(|d| *d >= 0.0)
            .map(|d| (d * 1000.0).round() as u64),
    })
}

/// Days from 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses the manifests' `2026-12-02T10:15:00.123Z` (fraction optional).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let h: u64 = t.next()?.parse().ok()?;
    let mi: u64 = t.next()?.parse().ok()?;
    let s: u64 = t.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let ms: u64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse().ok()?
    };
    let days = days_from_civil(y, mo, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms))
}

/// Finalizes a manifest left `Recording` by a crash or a restart (its room is gone):
/// streams without an end end where their files end (ffprobe; a missing file: at its
/// start), the room ends at the last stream end, and the mix becomes `Pending`. A
/// `Pending` manifest without a duration gets one the same way. Stored in place.
pub fn finalize_interrupted(manifest_path: &Path) -> Result<RoomManifest, String> {
    let mut manifest: RoomManifest =
        catalog::load(manifest_path).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    if manifest.mix != MixState::Recording
        && !(manifest.mix == MixState::Pending && manifest.duration_ms.is_none())
    {
        return Ok(manifest);
    }
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    for stream in &mut manifest.streams {
        if stream.end_ms.is_none() {
            let length = match probe(&dir.join(&stream.file)) {
                Ok(p) => p.duration_ms.unwrap_or(0),
                Err(e) => {
                    warn!(
                        "room {:?}: stream file {} unreadable: {e}",
                        manifest.room, stream.file
                    );
                    0
                }
            };
            stream.end_ms = Some(stream.start_ms.saturating_add(length));
        }
    }
    let duration = manifest
        .streams
        .iter()
        .filter_map(|s| s.end_ms)
        .max()
        .unwrap_or(0)
        .max(manifest.duration_ms.unwrap_or(0));
    manifest.duration_ms = Some(duration);
    if manifest.ended.is_none() {
        manifest.ended = parse_rfc3339(&manifest.started)
            .and_then(|t| t.checked_add(Duration::from_millis(duration)))
            .map(catalog::rfc3339);
    }
    if manifest.mix == MixState::Recording {
        info!(
            "room {:?} was cut short while recording ({} ms): its mix is pending",
            manifest.room, duration
        );
    }
    manifest.mix = MixState::Pending;
    catalog::store(manifest_path, &manifest)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    Ok(manifest)
}

/// Why a mix did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MixError {
    /// The mix failed (recorded in the manifest as `Failed` + `mix_error`).
    Failed(String),
    /// Killed by a shutdown: the manifest stays `Pending` for the next start.
    Stopped,
    /// The manifest is not `Pending` (done already, still recording) or unreadable.
    Skipped(String),
}

/// The mixer's wall clock bound for `duration_ms` of output.
pub fn timeout_for(duration_ms: u64) -> Duration {
    Duration::from_millis(duration_ms.saturating_mul(10)) + Duration::from_secs(60)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether `chrt --idle 0` works here (SCHED_IDLE may be refused in some containers).
fn chrt_works() -> bool {
    which("chrt")
        && Command::new("chrt")
            .args(["--idle", "0", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Mixes the `Pending` room of `manifest_path` into `<dir>/<mix_file>` (`dir`: the
/// manifest's directory), writes the mix's sidecar and marks the manifest `Done`, or
/// marks it `Failed` with `mix_error`. Returns the mixed file.
pub fn mix_room(
    manifest_path: &Path,
    mixer: &config::Mixer,
    stop: &AtomicBool,
) -> Result<PathBuf, MixError> {
    let manifest: RoomManifest = catalog::load(manifest_path)
        .map_err(|e| MixError::Skipped(format!("{}: {e}", manifest_path.display())))?;
    if manifest.mix != MixState::Pending {
        return Err(MixError::Skipped(format!(
            "room {:?}: mix is {:?}, not pending",
            manifest.room, manifest.mix
        )));
    }
    let manifest = if manifest.duration_ms.is_none() {
        finalize_interrupted(manifest_path).map_err(MixError::Failed)?
    } else {
        manifest
    };
    let started = Instant::now();
    let result = make_mix(manifest_path, &manifest, mixer, stop);
    let mut manifest = manifest;
    match result {
        Ok(path) => {
            manifest.mix = MixState::Done;
            manifest.mix_error = None;
            catalog::store(manifest_path, &manifest)
                .map_err(|e| MixError::Failed(format!("{}: {e}", manifest_path.display())))?;
            let wall = started.elapsed().as_secs_f64();
            let media = manifest.duration_ms.unwrap_or(0) as f64 / 1000.0;
            info!(
                "room {:?}: mix {} written: {media:.1} s in {wall:.1} s ({:.2}x real time)",
                manifest.room,
                path.display(),
                if wall > 0.0 { media / wall } else { 0.0 }
            );
            Ok(path)
        }
        Err(MixError::Failed(reason)) => {
            warn!("room {:?}: mix failed: {reason}", manifest.room);
            manifest.mix = MixState::Failed;
            manifest.mix_error = Some(reason.clone());
            if let Err(e) = catalog::store(manifest_path, &manifest) {
                warn!("{}: {e}", manifest_path.display());
            }
            Err(MixError::Failed(reason))
        }
        Err(other) => Err(other),
    }
}

fn make_mix(
    manifest_path: &Path,
    manifest: &RoomManifest,
    mixer: &config::Mixer,
    stop: &AtomicBool,
) -> Result<PathBuf, MixError> {
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let duration_ms = manifest.duration_ms.unwrap_or(0);
    if duration_ms == 0 {
        return Err(MixError::Failed("the room has no duration".into()));
    }
    if !mixer.video && !mixer.audio {
        return Err(MixError::Failed(
            "[records.mixer] video and audio are both off".into(),
        ));
    }
    if manifest.mix_file.is_empty()
        || manifest.mix_file.contains('/')
        || manifest.mix_file.starts_with('.')
    {
        return Err(MixError::Failed(format!(
            "bad mix file name {:?}",
            manifest.mix_file
        )));
    }
    let mut inputs = Vec::new();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for stream in &manifest.streams {
        let file = dir.join(&stream.file);
        let probe = match probe(&file) {
            Ok(p) if p.video || p.audio => p,
            Ok(_) => {
                warn!(
                    "room {:?}: {} has no audio or video: skipped",
                    manifest.room, stream.file
                );
                skipped.push(stream.file.clone());
                continue;
            }
            Err(e) => {
                warn!(
                    "room {:?}: {} unreadable, skipped: {e}",
                    manifest.room, stream.file
                );
                skipped.push(stream.file.clone());
                continue;
            }
        };
        let mut end = stream.end_ms.unwrap_or(duration_ms).min(duration_ms);
        if let Some(length) = probe.duration_ms {
            end = end.min(stream.start_ms.saturating_add(length));
        }
        let useful_video = probe.video && mixer.video;
        let useful_audio = probe.audio && mixer.audio;
        if !useful_video && !useful_audio {
            debug!(
                "room {:?}: {} has nothing to mix",
                manifest.room, stream.file
            );
            continue;
        }
        inputs.push(MixInput {
            login: stream.login.clone(),
            shift_ms: i64::try_from(stream.start_ms)
                .unwrap_or(i64::MAX)
                .saturating_sub(probe.start_ms),
            video: useful_video.then_some((stream.start_ms, end)),
            audio: useful_audio,
        });
        files.push(file);
    }
    if inputs.is_empty() {
        return Err(MixError::Failed(format!(
            "no readable stream file to mix (skipped: {})",
            skipped.join(", ")
        )));
    }
    let font = if mixer.video && mixer.show_names {
        if Path::new(FONT).is_file() {
            Some(PathBuf::from(FONT))
        } else {
            warn!(
                "room {:?}: font {FONT} missing (fonts-dejavu-core): mixed without names",
                manifest.room
            );
            None
        }
    } else {
        None
    };
    let graph = build_graph(
        &inputs,
        &GraphSpec {
            width: mixer.width.max(16),
            height: mixer.height.max(16),
            frame_rate: mixer.frame_rate.max(1),
            duration_ms,
            video: mixer.video,
            audio: mixer.audio,
            font,
        },
    );
    if graph.video_out.is_none() && graph.audio_out.is_none() {
        return Err(MixError::Failed(
            "nothing to mix (no audio in any stream file)".into(),
        ));
    }
    let out = dir.join(&manifest.mix_file);
    let tmp = dir.join(format!(".{}.part", manifest.mix_file));
    let script = dir.join(format!(".{}.filter", manifest.mix_file));
    std::fs::write(&script, &graph.script)
        .map_err(|e| MixError::Failed(format!("{}: {e}", script.display())))?;
    let result = run_ffmpeg(
        &files,
        &graph,
        &script,
        &tmp,
        mixer,
        duration_ms,
        &manifest.room,
        stop,
    );
    let _ = std::fs::remove_file(&script);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        MixError::Failed(format!("{}: {e}", out.display()))
    })?;
    let meta = RecordMeta {
        name: manifest.mix_file.clone(),
        kind: RecordKind::Mix,
        room: manifest.room.clone(),
        stream: None,
        login: None,
        started: manifest.started.clone(),
        ended: manifest.ended.clone(),
        duration_ms: Some(duration_ms),
        error: None,
    };
    catalog::store(&catalog::sidecar(&out), &meta)
        .map_err(|e| MixError::Failed(format!("{}: {e}", catalog::sidecar(&out).display())))?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn run_ffmpeg(
    files: &[PathBuf],
    graph: &Graph,
    script: &Path,
    tmp: &Path,
    mixer: &config::Mixer,
    duration_ms: u64,
    room: &str,
    stop: &AtomicBool,
) -> Result<(), MixError> {
    let mut command = if chrt_works() {
        let mut c = Command::new("chrt");
        c.args(["--idle", "0", "nice", "-n", "19", "ffmpeg"]);
        c
    } else {
        debug!("chrt --idle unavailable: the mix runs under nice only");
        let mut c = Command::new("nice");
        c.args(["-n", "19", "ffmpeg"]);
        c
    };
    command.args([
        "-hide_banner",
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-nostats",
    ]);
    command.args(["-progress", "pipe:1", "-filter_complex_threads", "1"]);
    for file in files {
        command.args(["-threads", "1", "-i"]).arg(file);
    }
    command.arg("-filter_complex_script").arg(script);
    if let Some(v) = &graph.video_out {
        let gop = mixer.frame_rate.max(1).saturating_mul(2);
        command.args(["-map", v, "-c:v", &mixer.encoder]);
        if mixer.encoder == "libx264" {
            command.args(["-preset", "ultrafast"]);
        }
        command.args(["-pix_fmt", "yuv420p", "-g", &gop.to_string()]);
    }
    if let Some(a) = &graph.audio_out {
        command.args(["-map", a, "-c:a", "aac", "-b:a", "128k"]);
    }
    command
        .args(["-threads", "1", "-t", &secs(duration_ms as i64)])
        .args(["-movflags", "+faststart", "-f", "mp4"])
        .arg(tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| MixError::Failed(format!("ffmpeg could not start: {e}")))?;
    info!(
        "room {room:?}: mixing {} stream file(s), {} ms",
        files.len(),
        duration_ms
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let progress_room = room.to_string();
    let progress = std::thread::spawn(move || {
        if let Some(out) = stdout {
            log_progress(BufReader::new(out), duration_ms, &progress_room);
        }
    });
    let errors = std::thread::spawn(move || {
        let mut tail: VecDeque<String> = VecDeque::new();
        if let Some(err) = stderr {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tail.len() == 8 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        Vec::from(tail).join(" | ")
    });
    let waited = hook::wait_bounded(&mut child, timeout_for(duration_ms), stop);
    let _ = progress.join();
    let errors = errors.join().unwrap_or_default();
    match waited {
        Waited::Exited(status) if status.success() => Ok(()),
        Waited::Exited(status) => Err(MixError::Failed(format!("ffmpeg {status}: {errors}"))),
        Waited::TimedOut => Err(MixError::Failed(format!(
            "ffmpeg killed after {} s (timeout)",
            timeout_for(duration_ms).as_secs()
        ))),
        Waited::Stopped => {
            info!("room {room:?}: mix interrupted by the shutdown; pending for the next start");
            Err(MixError::Stopped)
        }
    }
}

/// Logs `-progress` output: a line every 10 % or 10 s.
fn log_progress(reader: impl BufRead, duration_ms: u64, room: &str) {
    let mut last_decile = 0;
    let mut last_time = Instant::now();
    for line in reader.lines().map_while(Result::ok) {
        let Some(us) = line.strip_prefix("out_time_us=") else {
            continue;
        };
        let Ok(us) = us.trim().parse::<i64>() else {
            continue;
        };
        let done_ms = (us.max(0) as u64) / 1000;
        let percent = (done_ms * 100 / duration_ms.max(1)).min(100);
        let decile = percent / 10;
        if decile > last_decile || last_time.elapsed() >= Duration::from_secs(10) {
            last_decile = decile;
            last_time = Instant::now();
            info!(
                "room {room:?}: mix {percent} % ({} of {} s)",
                done_ms / 1000,
                duration_ms / 1000
            );
        }
    }
}

/// The room mix service: one worker thread mixing finalized rooms in turn (each mix an
/// ffmpeg process at idle priority: `chrt --idle 0`, `nice -n 19`, one thread, killed
/// after `timeout_for(duration)`), then running the room record hook.
pub struct Mixer {
    tx: Option<mpsc::Sender<PathBuf>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

/// The manifests (`*.room.json`) of a directory, by name.
fn manifests_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".room.json") && !n.starts_with('.'))
        })
        .collect();
    found.sort();
    found
}

impl Mixer {
    /// Starts the worker. The manifests of `records.dir` are listed now: `Pending` ones
    /// are queued, `Recording` ones (rooms cut short by a crash or a restart) are
    /// finalized by the worker and queued too.
    pub fn start(records: &config::Records) -> Mixer {
        Mixer::start_with_events(records, crate::events::Events::default())
    }

    /// `start`, emitting `mix.finished` through `events` after each mix.
    pub fn start_with_events(records: &config::Records, events: crate::events::Events) -> Mixer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let mut recover = Vec::new();
        let mut pending = Vec::new();
        for path in manifests_in(&records.dir) {
            match catalog::load::<RoomManifest>(&path) {
                Ok(m) if m.mix == MixState::Recording => recover.push(path),
                Ok(m) if m.mix == MixState::Pending => pending.push(path),
                Ok(_) => {}
                Err(e) => warn!("{}: {e}", path.display()),
            }
        }
        if !recover.is_empty() || !pending.is_empty() {
            info!(
                "mixer: {} pending room mix(es), {} interrupted room(s) in {}",
                pending.len(),
                recover.len(),
                records.dir.display()
            );
        }
        let worker_stop = stop.clone();
        let records = records.clone();
        let worker = std::thread::Builder::new()
            .name("room-mixer".into())
            .spawn(move || {
                for path in recover {
                    if worker_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match finalize_interrupted(&path) {
                        Ok(_) => pending.push(path),
                        Err(e) => warn!("mixer: {e}"),
                    }
                }
                let mut queue: VecDeque<PathBuf> = pending.into();
                loop {
                    if worker_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let next = match queue.pop_front() {
                        Some(path) => path,
                        None => match rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(path) => path,
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => return,
                        },
                    };
                    while let Ok(more) = rx.try_recv() {
                        if more != next && !queue.contains(&more) {
                            queue.push_back(more);
                        }
                    }
                    job(&next, &records, &worker_stop, &events);
                }
            });
        let worker = match worker {
            Ok(handle) => Some(handle),
            Err(e) => {
                warn!("mixer: the worker thread could not start: {e}");
                None
            }
        };
        Mixer {
            tx: Some(tx),
            stop,
            worker,
        }
    }

    /// Queues a finalized room's manifest (`<dir>/<room>-<UTC start>.room.json`).
    pub fn submit(&self, manifest_path: impl Into<PathBuf>) {
        let path = manifest_path.into();
        if let Some(tx) = &self.tx {
            if tx.send(path.clone()).is_err() {
                warn!("mixer stopped: {} not queued", path.display());
            }
        }
    }

    /// Stops the worker: a running mix (or hook) is killed (its room stays `Pending`),
    /// queued ones wait for the next start. Waits at most 5 s.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if worker.is_finished() {
                let _ = worker.join();
            } else {
                warn!("mixer: the worker did not end within 5 s");
            }
        }
    }
}

impl Drop for Mixer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One queued room: its mix, then the hook.
fn job(path: &Path, records: &config::Records, stop: &AtomicBool, events: &crate::events::Events) {
    match mix_room(path, &records.mixer, stop) {
        Ok(file) => {
            let manifest = catalog::load::<RoomManifest>(path).ok();
            let room = manifest
                .as_ref()
                .map(|m| m.room.clone())
                .unwrap_or_default();
            let mut participants: Vec<String> = Vec::new();
            let mut streams: Vec<String> = Vec::new();
            for s in manifest.iter().flat_map(|m| &m.streams) {
                if !participants.contains(&s.login) {
                    participants.push(s.login.clone());
                }
                if !streams.contains(&s.stream) {
                    streams.push(s.stream.clone());
                }
            }
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            events.emit(
                crate::events::EventKind::MixFinished,
                Some(&room),
                serde_json::json!({
                    "file": name,
                    "participants": participants,
                    "streams": streams,
                    "duration_ms": manifest.as_ref().and_then(|m| m.duration_ms),
                }),
            );
            if !records.on_room_record_hook.trim().is_empty() {
                hook::run_room_hook(
                    &records.on_room_record_hook,
                    &file,
                    &room,
                    Duration::from_millis(records.hook_timeout_ms),
                    stop,
                );
            }
        }
        Err(MixError::Skipped(why)) => debug!("mixer: {why}"),
        Err(MixError::Stopped) | Err(MixError::Failed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_joins_and_leaves() {
        // A 0-10 s, B 3-9 s, room 10 s.
        let cuts = intervals(&[(0, 10_000), (3_000, 9_000)], 10_000);
        assert_eq!(
            cuts,
            vec![
                Interval {
                    start_ms: 0,
                    end_ms: 3_000,
                    present: vec![0]
                },
                Interval {
                    start_ms: 3_000,
                    end_ms: 9_000,
                    present: vec![0, 1]
                },
                Interval {
                    start_ms: 9_000,
                    end_ms: 10_000,
                    present: vec![0]
                },
            ]
        );
        // Gaps with nobody are left out; spans past the end are clamped; empty spans
        // ignored; back-to-back spans of one set are merged.
        let cuts = intervals(&[(1_000, 2_000), (4_000, 20_000), (5_000, 5_000)], 8_000);
        assert_eq!(
            cuts,
            vec![
                Interval {
                    start_ms: 1_000,
                    end_ms: 2_000,
                    present: vec![0]
                },
                Interval {
                    start_ms: 4_000,
                    end_ms: 8_000,
                    present: vec![1]
                },
            ]
        );
        assert!(intervals(&[], 1_000).is_empty());
        assert!(intervals(&[(2_000, 3_000)], 1_000).is_empty());
    }

    #[test]
    fn grids_and_tiles() {
        let expected = [
            (1, (1, 1)),
            (2, (2, 1)),
            (3, (2, 2)),
            (4, (2, 2)),
            (5, (3, 2)),
            (6, (3, 2)),
            (7, (3, 3)),
            (9, (3, 3)),
            (10, (4, 3)),
            (16, (4, 4)),
        ];
        for (n, grid_of) in expected {
            assert_eq!(grid(n), grid_of, "{n} tiles");
        }
        assert_eq!(
            tiles(1, 1280, 720),
            vec![Tile {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }]
        );
        assert_eq!(
            tiles(2, 1280, 720),
            vec![
                Tile {
                    x: 0,
                    y: 0,
                    w: 640,
                    h: 720
                },
                Tile {
                    x: 640,
                    y: 0,
                    w: 640,
                    h: 720
                }
            ]
        );
        // 3 in a 2x2: the last row is centered.
        let three = tiles(3, 1280, 720);
        assert_eq!(
            three[2],
            Tile {
                x: 320,
                y: 360,
                w: 640,
                h: 360
            }
        );
        // 5 in 3x2 at an odd width: even sizes, inside the frame.
        for t in tiles(5, 1279, 719) {
            assert_eq!(t.w % 2, 0);
            assert_eq!(t.h % 2, 0);
            assert!(t.x + t.w <= 1279 && t.y + t.h <= 719, "{t:?}");
        }
    }

    #[test]
    fn logins_are_escaped_for_both_levels() {
        assert_eq!(escape_value("alice"), "alice");
        assert_eq!(escape_value("a:b"), "a\\\\:b");
        assert_eq!(escape_value("a'b"), "a\\\\\\'b");
        assert_eq!(escape_value("a,b;[c]"), "a\\,b\\;\\[c\\]");
        assert_eq!(escape_value("a\\b"), "a\\\\\\\\b");
        assert_eq!(escape_value("a\nb"), "a b");
        assert_eq!(escape_value(" x "), "\\\\ x\\\\ ");
    }

    fn spec(video: bool, audio: bool, font: bool) -> GraphSpec {
        GraphSpec {
            width: 1280,
            height: 720,
            frame_rate: 30,
            duration_ms: 10_000,
            video,
            audio,
            font: font.then(|| PathBuf::from("/f.ttf")),
        }
    }

    fn two() -> Vec<MixInput> {
        vec![
            MixInput {
                login: "alice".into(),
                shift_ms: 0,
                video: Some((0, 10_000)),
                audio: true,
            },
            MixInput {
                login: "b:ob".into(),
                shift_ms: 3_000,
                video: Some((3_000, 9_000)),
                audio: true,
            },
        ]
    }

    #[test]
    fn graph_of_a_late_joiner() {
        let g = build_graph(&two(), &spec(true, true, true));
        let s = &g.script;
        assert_eq!(g.video_out.as_deref(), Some("[vout]"));
        assert_eq!(g.audio_out.as_deref(), Some("[aout]"));
        assert!(
            s.starts_with("color=c=black:s=1280x720:r=30:d=10.000[bg]"),
            "{s}"
        );
        // Alice: full frame alone, half while Bob is there: two sizes, one split.
        assert!(
            s.contains("[0:v]setpts=PTS+0.000/TB,split=2[v0s0][v0s1]"),
            "{s}"
        );
        assert!(s.contains("[v0s0]scale=1280:720:"), "{s}");
        assert!(s.contains("[v0s1]scale=640:720:"), "{s}");
        assert!(
            s.contains("enable='gte(t,0.000)*lt(t,3.000)+gte(t,9.000)*lt(t,10.000)'"),
            "{s}"
        );
        // Bob: one size, on the right from 3 to 9 s, his login escaped.
        assert!(s.contains("[1:v]setpts=PTS+3.000/TB[v1s0]"), "{s}");
        assert!(
            s.contains("overlay=x=640:y=0:eof_action=pass:enable='gte(t,3.000)*lt(t,9.000)'"),
            "{s}"
        );
        assert!(s.contains("text=b\\\\:ob"), "{s}");
        assert!(s.contains("fontfile=/f.ttf"), "{s}");
        // Audio: each delayed and resampled from 0, mixed without normalizing.
        assert!(
            s.contains("[1:a]asetpts=PTS+3.000/TB,aresample=async=1:first_pts=0"),
            "{s}"
        );
        assert!(
            s.contains("[a0][a1]amix=inputs=2:duration=longest:normalize=0"),
            "{s}"
        );
        assert!(s.contains("apad=whole_dur=10.000[aout]"), "{s}");
        assert!(s.ends_with("[aout]"), "{s}");
    }

    #[test]
    fn graph_options() {
        // No names.
        let g = build_graph(&two(), &spec(true, true, false));
        assert!(!g.script.contains("drawtext"));
        // Audio only.
        let g = build_graph(&two(), &spec(false, true, true));
        assert_eq!(g.video_out, None);
        assert!(!g.script.contains(":v]"), "{}", g.script);
        // Video only.
        let g = build_graph(&two(), &spec(true, false, true));
        assert_eq!(g.audio_out, None);
        assert!(!g.script.contains(":a]"), "{}", g.script);
        // Nobody with video: a black frame; one audio input needs no amix.
        let only = vec![MixInput {
            login: "x".into(),
            shift_ms: -7,
            video: None,
            audio: true,
        }];
        let g = build_graph(&only, &spec(true, true, true));
        assert!(g.script.contains("[bg]null[vout]"), "{}", g.script);
        assert!(
            g.script.contains("[0:a]asetpts=PTS-0.007/TB"),
            "{}",
            g.script
        );
        assert!(!g.script.contains("amix"), "{}", g.script);
        // Same size, another place: a piecewise expression. Four in a 2x2, the first
        // leaves at 5 s: the fourth moves from bottom right to bottom center.
        let four: Vec<MixInput> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, login)| MixInput {
                login: (*login).into(),
                shift_ms: 0,
                video: Some((0, if i == 0 { 5_000 } else { 10_000 })),
                audio: false,
            })
            .collect();
        let g = build_graph(&four, &spec(true, false, false));
        assert!(
            g.script.contains("[t3s0]overlay=x='640*gte(t,0.000)*lt(t,5.000)+320*gte(t,5.000)*lt(t,10.000)':y=360:"),
            "{}",
            g.script
        );
        assert!(
            g.script.contains("[3:v]setpts=PTS+0.000/TB[v3s0]"),
            "{}",
            g.script
        );
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_206_500_123);
        assert_eq!(parse_rfc3339(&catalog::rfc3339(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn timeouts_grow_with_the_duration() {
        assert_eq!(timeout_for(0), Duration::from_secs(60));
        assert_eq!(timeout_for(60_000), Duration::from_secs(660));
    }
}
