//! The kubelet CRI log format: one record per line,
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <text>\n`.
//!
//! `F` ends a line; `P` marks a piece of a line that continues in the next record: a line
//! longer than the maximum is split into `P` records and a final `F`. Each stream has its
//! own pending partial line, so interleaved stdout and stderr never mix within a record.
//! When a stream closes, what is left of it is written as a final `F` record.
//! The file is opened in append mode and can be reopened after kubelet rotates it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::linux::beneath;

/// kubelet's default maximum line before splitting (containerd: 16 KiB).
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Formats a time as RFC 3339 with nanoseconds in UTC, e.g. `2026-11-23T14:32:34.123456789Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

/// Writes container output in the CRI log format.
#[derive(Debug)]
pub struct CriLogWriter<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
    max_line: usize,
}

impl<W: Write> CriLogWriter<W> {
    pub fn new(out: W, max_line: usize) -> Self {
        CriLogWriter {
            out,
            pending: [Vec::new(), Vec::new()],
            max_line: max_line.max(1),
        }
    }

    fn record(
        &mut self,
        now: SystemTime,
        stream: Stream,
        tag: &str,
        text: &[u8],
    ) -> io::Result<()> {
        let mut rec = Vec::with_capacity(text.len() + 48);
        rec.extend_from_slice(timestamp(now).as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.name().as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(tag.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(text);
        rec.push(b'\n');
        // One write per record, so that records from a single writer never interleave.
        self.out.write_all(&rec)
    }

    /// Writes bytes read from one stream at time `now`.
    pub fn write(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let i = stream.index();
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.pending[i]);
                    line.extend_from_slice(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    let mut chunks = line.chunks(self.max_line).peekable();
                    if line.is_empty() {
                        self.record(now, stream, "F", b"")?;
                    }
                    while let Some(c) = chunks.next() {
                        let tag = if chunks.peek().is_some() { "P" } else { "F" };
                        self.record(now, stream, tag, c)?;
                    }
                }
                None => {
                    self.pending[i].extend_from_slice(rest);
                    rest = &[];
                }
            }
            // A line that already exceeds the maximum is written out as partial records.
            while self.pending[i].len() > self.max_line {
                let piece: Vec<u8> = self.pending[i].drain(..self.max_line).collect();
                self.record(now, stream, "P", &piece)?;
            }
        }
        Ok(())
    }

    /// The stream closed: what is left of its last line is written as a full record.
    pub fn close_stream(&mut self, stream: Stream, now: SystemTime) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending[stream.index()]);
        if !rest.is_empty() {
            self.record(now, stream, "F", &rest)?;
        }
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// A CRI log file that can be reopened after rotation. It is opened beneath the pod's log
/// directory, held open, and never through a symlink: a pod that can write its log
/// directory (a hostPath volume) cannot point the next open at a file of the host.
#[derive(Debug)]
pub struct CriLogFile {
    dir: OwnedFd,
    rel: PathBuf,
    path: PathBuf,
    pub writer: CriLogWriter<File>,
}

impl CriLogFile {
    /// Opens `rel` beneath the absolute directory `dir` (made when missing, as kubelet
    /// expects of the runtime), creating the file and its parent directories beneath it.
    pub fn open(dir: &Path, rel: &Path, max_line: usize) -> io::Result<CriLogFile> {
        if !dir.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log directory {}: must be absolute", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let dir_fd = beneath::open_dir(dir)?;
        let file = beneath::open_append(&dir_fd, rel, 0o640)?;
        Ok(CriLogFile {
            dir: dir_fd,
            rel: rel.to_owned(),
            path: dir.join(rel),
            writer: CriLogWriter::new(file, max_line),
        })
    }

    /// Opens the file again (kubelet renamed the old one), beneath the same directory as
    /// before; pending partial lines carry over.
    pub fn reopen(&mut self) -> io::Result<()> {
        let f = beneath::open_append(&self.dir, &self.rel, 0o640)?;
        *self.writer.get_mut() = f;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_479_427_200, 5) // 2016-11-18T00:00:00.000000005Z
    }

    fn text(w: &CriLogWriter<Vec<u8>>) -> String {
        String::from_utf8(w.out.clone()).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(timestamp(t()), "2016-11-18T00:00:00.000000005Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::new(951_782_400 + 86_399, 999_999_999)),
            "2000-02-29T23:59:59.999999999Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            "2100-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn lines_partials_and_streams() {
        let mut w = CriLogWriter::new(Vec::new(), 8);
        w.write(Stream::Stdout, b"hello\nwor", t()).unwrap();
        w.write(Stream::Stderr, b"err\n", t()).unwrap();
        w.write(Stream::Stdout, b"ld\n\n", t()).unwrap();
        w.write(Stream::Stdout, b"0123456789abcdefXY\n", t())
            .unwrap();
        w.write(Stream::Stdout, b"tail", t()).unwrap();
        w.close_stream(Stream::Stdout, t()).unwrap();
        let ts = "2016-11-18T00:00:00.000000005Z";
        let want = [
            format!("{ts} stdout F hello"),
            format!("{ts} stderr F err"),
            format!("{ts} stdout F world"),
            format!("{ts} stdout F "),
            format!("{ts} stdout P 01234567"),
            format!("{ts} stdout P 89abcdef"),
            format!("{ts} stdout F XY"),
            format!("{ts} stdout F tail"),
        ];
        assert_eq!(text(&w), want.join("\n") + "\n");
    }

    #[test]
    fn a_long_line_without_newline_is_flushed_as_partials() {
        let mut w = CriLogWriter::new(Vec::new(), 4);
        w.write(Stream::Stdout, b"abcdefghij", t()).unwrap();
        let out = text(&w);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.lines().all(|l| l.contains(" stdout P ")));
        w.write(Stream::Stdout, b"\n", t()).unwrap();
        assert!(text(&w).ends_with(" stdout F ij\n"));
    }

    #[test]
    fn reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c/0.log");
        let mut f = CriLogFile::open(dir.path(), Path::new("c/0.log"), DEFAULT_MAX_LINE).unwrap();
        f.writer.write(Stream::Stdout, b"one\n", t()).unwrap();
        std::fs::rename(&p, dir.path().join("c/0.log.1")).unwrap();
        f.writer.write(Stream::Stdout, b"two-", t()).unwrap();
        f.reopen().unwrap();
        f.writer.write(Stream::Stdout, b"three\n", t()).unwrap();
        assert!(
            std::fs::read_to_string(dir.path().join("c/0.log.1"))
                .unwrap()
                .ends_with("F one\n")
        );
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .ends_with("F two-three\n")
        );
    }
    #[test]
    fn reopen_refuses_a_swapped_in_symlink_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let mut f = CriLogFile::open(dir.path(), Path::new("0.log"), DEFAULT_MAX_LINE).unwrap();
        std::fs::remove_file(dir.path().join("0.log")).unwrap();
        let victim = host.path().join("victim");
        std::os::unix::fs::symlink(&victim, dir.path().join("0.log")).unwrap();
        assert!(f.reopen().is_err());
        assert!(!victim.exists());
        assert!(CriLogFile::open(dir.path(), Path::new("../x.log"), DEFAULT_MAX_LINE).is_err());
        assert!(CriLogFile::open(Path::new("rel"), Path::new("x.log"), DEFAULT_MAX_LINE).is_err());
    }
}
