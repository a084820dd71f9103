//! Writing a snapshot file so that a crash at any moment leaves the previous one whole
//! (a temporary name, fsync, rename, fsync of the directory), and reading one back
//! block by block, each checked before its entries are used.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use engine::SavedEntry;

use super::format::{self, FormatError, Header, Next, Trailer};

/// What a finished snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
}

/// Why a snapshot could not be written or read at all.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is refused: {source}", path.display())]
    Refused { path: PathBuf, source: FormatError },
    #[error("the snapshot {} was abandoned: {reason}", path.display())]
    Abandoned { path: PathBuf, reason: String },
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A snapshot being written under a temporary name beside its final one.
pub struct SnapshotWriter {
    file: Option<BufWriter<File>>,
    temporary: PathBuf,
    path: PathBuf,
    trailer: Trailer,
    bytes: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path, header: Header) -> Result<Self, SnapshotError> {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".tmp-{}", std::process::id()));
        let temporary = path.with_file_name(name);
        let file = File::create(&temporary).map_err(io_error("creating", &temporary))?;
        let mut writer = Self {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temporary,
            path: path.to_owned(),
            trailer: Trailer {
                blocks: 0,
                entries: 0,
            },
            bytes: 0,
        };
        writer.write(&format::encode_header(header))?;
        Ok(writer)
    }

    /// Appends a block made by [`format::BlockBuilder`] holding `entries` entries.
    pub fn write_block(&mut self, block: &[u8], entries: u32) -> Result<(), SnapshotError> {
        self.write(block)?;
        self.trailer.blocks += 1;
        self.trailer.entries += u64::from(entries);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(bytes)
            .map_err(io_error("writing", &self.temporary))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the trailer, makes the file durable and puts it in place of the previous
    /// snapshot.
    pub fn finish(mut self) -> Result<Written, SnapshotError> {
        self.write(&format::encode_trailer(self.trailer))?;
        let file = self.file.take().expect("open until finished");
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_error("writing", &self.temporary))?;
        file.sync_all()
            .map_err(io_error("syncing", &self.temporary))?;
        fs::rename(&self.temporary, &self.path).map_err(io_error("renaming into", &self.path))?;
        // The rename itself is durable once the directory is.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing the directory of", &self.path))?;
        Ok(Written {
            entries: self.trailer.entries,
            bytes: self.bytes,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Unfinished: the previous snapshot stays; this one's remains go.
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

/// A piece of a snapshot as a core hands it to the thread writing the file.
#[derive(Debug)]
pub enum Part {
    /// A block from [`format::BlockBuilder::finish`] and how many entries it holds.
    Block { bytes: Vec<u8>, entries: u32 },
    /// One core has sent all its blocks.
    Done,
}

/// Writes the parts `cores` cores send (blocks in any interleaving, then one `Done` each)
/// to a snapshot at `path`, which replaces the previous one only once every core is done.
/// If the senders all go before that, the snapshot is abandoned and the previous one stays.
pub fn write_parts(
    path: &Path,
    header: Header,
    parts: &flume::Receiver<Part>,
    cores: usize,
) -> Result<Written, SnapshotError> {
    let mut writer = SnapshotWriter::create(path, header)?;
    let mut done = 0;
    while done < cores {
        match parts.recv() {
            Ok(Part::Block { bytes, entries }) => writer.write_block(&bytes, entries)?,
            Ok(Part::Done) => done += 1,
            Err(_) => {
                return Err(SnapshotError::Abandoned {
                    path: path.to_owned(),
                    reason: format!("{} of {cores} cores did not finish saving", cores - done),
                })
            }
        }
    }
    writer.finish()
}

/// What reading a snapshot found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    pub header: Option<Header>,
    /// Entries in blocks that passed their checks (handed to the caller).
    pub entries: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks whose checks failed, with their entries: none of them was used.
    pub bad_blocks: u64,
    /// What was wrong past the good blocks, if anything (damage, truncation).
    pub problems: Vec<String>,
}

/// Opens the snapshot at `path` and says how long it is; `Ok(None)`: there is none.
pub fn open(path: &Path) -> Result<Option<(File, u64)>, SnapshotError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("opening", path)(e)),
    };
    let size = file
        .metadata()
        .map_err(io_error("reading the size of", path))?
        .len();
    Ok(Some((file, size)))
}

/// Reads the snapshot at `path`, handing every entry of every block that passes its
/// checks to `each`. `Ok(None)`: there is no snapshot. A file that is not a snapshot of
/// this format is refused whole; damage further in costs only what it touches, and is
/// listed in the report's problems.
pub fn read(
    path: &Path,
    each: impl FnMut(SavedEntry<'_>),
) -> Result<Option<ReadReport>, SnapshotError> {
    let Some((mut file, size)) = open(path)? else {
        return Ok(None);
    };
    read_from(&mut file, size, path, each).map(Some)
}

/// Reads a snapshot of `size` bytes from `file` as [`read`] does; `path` names it in
/// errors.
pub fn read_from(
    file: &mut impl Read,
    size: u64,
    path: &Path,
    mut each: impl FnMut(SavedEntry<'_>),
) -> Result<ReadReport, SnapshotError> {
    let mut report = ReadReport::default();
    let scan = scan(file, size, path, |block| match block.decode() {
        Ok(entries) => {
            report.blocks += 1;
            report.entries += entries.len() as u64;
            entries.into_iter().for_each(&mut each);
        }
        Err(problem) => {
            report.bad_blocks += 1;
            report.problems.push(problem);
        }
    })?;
    report.header = Some(scan.header);
    report.bytes = scan.bytes;
    report.problems.extend(scan.problems);
    Ok(report)
}

/// A block as read from the file, not yet checked.
#[derive(Debug)]
pub struct RawBlock {
    /// Where its header starts in the file.
    pub at: u64,
    pub payload: Vec<u8>,
    pub entries: u32,
    pub crc: u32,
}

impl RawBlock {
    /// The block's entries once every check passes; else what was wrong, and where.
    pub fn decode(&self) -> Result<Vec<SavedEntry<'_>>, String> {
        format::decode_block(&self.payload, self.entries, self.crc).map_err(|e| {
            format!(
                "block at byte {} skipped ({} entries): {e}",
                self.at, self.entries
            )
        })
    }
}

/// What reading a snapshot's structure found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub header: Header,
    /// Blocks read (checked or not).
    pub blocks: u64,
    pub bytes: u64,
    /// What was wrong in the structure (truncation, a damaged block header or trailer).
    pub problems: Vec<String>,
}

/// Reads the header, then hands every block to `each` unchecked (so that checking and
/// using them can run on other threads while the file is read), then the trailer. A
/// file that is not a snapshot of this format is refused; past the header, a structure
/// that cannot be followed ends the scan with a problem.
pub fn scan(
    file: &mut impl Read,
    size: u64,
    path: &Path,
    mut each: impl FnMut(RawBlock),
) -> Result<Scan, SnapshotError> {
    let mut header = [0u8; format::HEADER_BYTES];
    let got = read_up_to(file, &mut header).map_err(io_error("reading", path))?;
    let refused = |source| SnapshotError::Refused {
        path: path.to_owned(),
        source,
    };
    let mut scan = Scan {
        header: format::decode_header(&header[..got]).map_err(refused)?,
        blocks: 0,
        bytes: got as u64,
        problems: Vec::new(),
    };
    loop {
        let mut head = [0u8; format::BLOCK_HEADER_BYTES];
        let at = scan.bytes;
        let got = read_up_to(file, &mut head).map_err(io_error("reading", path))?;
        scan.bytes += got as u64;
        if got < head.len() {
            scan.problems.push(format!(
                "the file ends after {} bytes, without its trailer: it was cut short",
                scan.bytes
            ));
            break;
        }
        let left = size.saturating_sub(scan.bytes);
        match format::decode_next(&head, left) {
            Ok(Next::Trailer) => {
                let mut trailer = head.to_vec();
                let mut rest = [0u8; format::TRAILER_BYTES - format::BLOCK_HEADER_BYTES];
                let got = read_up_to(file, &mut rest).map_err(io_error("reading", path))?;
                scan.bytes += got as u64;
                trailer.extend_from_slice(&rest[..got]);
                match format::decode_trailer(&trailer) {
                    Ok(t) if t.blocks == scan.blocks => {}
                    Ok(t) => scan.problems.push(format!(
                        "the trailer counts {} blocks of {} entries, the file holds {}",
                        t.blocks, t.entries, scan.blocks
                    )),
                    Err(e) => scan.problems.push(e.to_string()),
                }
                break;
            }
            Ok(Next::Block {
                payload_len,
                entries,
                crc,
            }) => {
                let mut payload = vec![0; payload_len as usize];
                file.read_exact(&mut payload)
                    .map_err(io_error("reading", path))?;
                scan.bytes += u64::from(payload_len);
                scan.blocks += 1;
                each(RawBlock {
                    at,
                    payload,
                    entries,
                    crc,
                });
            }
            Err(e) => {
                scan.problems.push(format!("stopped at byte {at}: {e}"));
                break;
            }
        }
    }
    Ok(scan)
}

/// Fills `buf` as far as the file goes; returns how many bytes were read.
fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format::BlockBuilder;
    use engine::{Region, Standing};

    fn entry(key: &[u8]) -> SavedEntry<'_> {
        SavedEntry {
            key,
            value: b"jvalue",
            flags: 0,
            cached_at_ms: 1,
            expires_at_ms: None,
            standing: Standing {
                frequency: 1,
                region: Region::Window,
            },
        }
    }

    fn write(path: &Path, blocks: &[&[&str]]) -> Written {
        let mut writer = SnapshotWriter::create(
            path,
            Header {
                cores: 2,
                saved_at_ms: 5,
            },
        )
        .unwrap();
        for keys in blocks {
            let mut block = BlockBuilder::default();
            for key in *keys {
                block.push(&entry(key.as_bytes()));
            }
            let n = block.entries();
            writer.write_block(&block.finish(), n).unwrap();
        }
        writer.finish().unwrap()
    }

    fn keys(path: &Path) -> (Vec<String>, ReadReport) {
        let mut keys = Vec::new();
        let report = read(path, |e| {
            keys.push(String::from_utf8(e.key.to_vec()).unwrap())
        })
        .unwrap()
        .unwrap();
        (keys, report)
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cm-snapshot-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_written_snapshot_reads_back_and_replaces_the_previous_one_whole() {
        let dir = dir();
        let path = dir.join("cache.snap");
        assert!(read(&path, |_| {}).unwrap().is_none(), "none yet");
        write(&path, &[&["old"]]);
        let written = write(&path, &[&["a", "b"], &["c"]]);
        assert_eq!(written.entries, 3);
        assert_eq!(written.bytes, fs::metadata(&path).unwrap().len());
        let (found, report) = keys(&path);
        assert_eq!(found, ["a", "b", "c"]);
        assert_eq!(report.blocks, 2);
        assert!(report.problems.is_empty(), "{report:?}");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["cache.snap"], "no temporary file is left");

        // Abandoned half-way (a crash, a full disk): the previous snapshot is untouched.
        let mut abandoned = SnapshotWriter::create(
            &path,
            Header {
                cores: 1,
                saved_at_ms: 6,
            },
        )
        .unwrap();
        abandoned.write(b"partial").unwrap();
        drop(abandoned);
        assert_eq!(keys(&path).0, ["a", "b", "c"]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_costs_only_the_blocks_it_touches() {
        let dir = dir();
        let path = dir.join("damaged.snap");
        write(&path, &[&["a"], &["b"], &["c"]]);
        let good = fs::read(&path).unwrap();
        let block_len = (good.len() - format::HEADER_BYTES - format::TRAILER_BYTES) / 3;
        // A flipped byte inside the second block's payload.
        let mut damaged = good.clone();
        damaged[format::HEADER_BYTES + block_len + format::BLOCK_HEADER_BYTES + 3] ^= 0x40;
        fs::write(&path, &damaged).unwrap();
        let (found, report) = keys(&path);
        assert_eq!(found, ["a", "c"]);
        assert_eq!(report.bad_blocks, 1);
        assert!(report.problems[0].contains("checksum"), "{report:?}");

        // Cut short inside the third block: the first two are kept.
        fs::write(&path, &good[..good.len() - format::TRAILER_BYTES - 4]).unwrap();
        let (found, report) = keys(&path);
        assert_eq!(found, ["a", "b"]);
        assert!(
            report.problems[0].contains("left in the file"),
            "{report:?}"
        );

        // Cut at a block boundary: no trailer.
        fs::write(&path, &good[..good.len() - format::TRAILER_BYTES]).unwrap();
        let (found, report) = keys(&path);
        assert_eq!(found, ["a", "b", "c"]);
        assert!(report.problems[0].contains("cut short"), "{report:?}");

        // Not a snapshot at all, or from a future format: refused whole.
        fs::write(&path, b"{\"not\": \"a snapshot\"}").unwrap();
        let refused = read(&path, |_| panic!("nothing is used")).unwrap_err();
        assert!(
            refused.to_string().contains("not a cache-manager snapshot"),
            "{refused}"
        );
        fs::write(&path, &good[..10]).unwrap();
        assert!(read(&path, |_| panic!("nothing is used")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
