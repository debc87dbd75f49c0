//! Writes a batch's new objects as one pack, instead of one loose file per object.
//!
//! A commit here makes about six objects (blob, trees on the path, commit). As loose
//! objects that is six new inodes per commit, and inode creation dominated the
//! profile. One pack per batch is two files however large the batch. The pack is
//! built in memory (plain, undeltified entries), and gix's own bundle writer
//! verifies it and writes the index, with a `.keep` file that protects the pack from
//! a concurrent `git repack` until the branch names its objects.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::objs::Kind;
use gix::odb::memory::Storage;

/// Where a written pack lives; [`Written::release`] drops its `.keep` once the
/// branch points at its objects.
pub(super) struct Written {
    files: Vec<PathBuf>,
    keep: Option<PathBuf>,
}

impl Written {
    /// Flushes the pack, its index and their directory entries to disk. Only these
    /// files: a `syncfs` would also wait for whatever else the disk is writing.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        for file in &self.files {
            std::fs::File::open(file)?.sync_all()?;
        }
        if let Some(dir) = self.files.first().and_then(|f| f.parent()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub(super) fn release(self) -> std::io::Result<()> {
        match self.keep {
            Some(keep) => std::fs::remove_file(keep),
            None => Ok(()),
        }
    }
}

/// Writes every object of `objects` into one new pack under `objects_dir/pack`.
pub(super) fn write(objects_dir: &Path, objects: &Storage, hash: gix::hash::Kind) -> Result<Written, String> {
    if objects.is_empty() {
        return Ok(Written { files: Vec::new(), keep: None });
    }
    let stream = encode(objects, hash).map_err(|e| e.to_string())?;
    let pack_dir = objects_dir.join("pack");
    std::fs::create_dir_all(&pack_dir).map_err(|e| format!("{}: {e}", pack_dir.display()))?;
    let outcome = gix::odb::pack::Bundle::write_to_directory(
        &mut std::io::Cursor::new(stream),
        Some(&pack_dir),
        &mut gix::progress::Discard,
        &AtomicBool::new(false),
        None::<gix::objs::find::Never>,
        hash,
        gix::odb::pack::bundle::write::Options {
            thread_limit: Some(1),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Written {
        files: outcome.data_path.into_iter().chain(outcome.index_path).collect(),
        keep: outcome.keep_path,
    })
}

/// A version 2 pack stream: header, one zlib stream per object, then the checksum.
fn encode(objects: &Storage, hash: gix::hash::Kind) -> std::io::Result<Vec<u8>> {
    let capacity = objects.values().map(|(_, data)| data.len() / 2 + 16).sum::<usize>() + 32;
    let out = Shared::default();
    out.0.borrow_mut().reserve(capacity);
    out.append(b"PACK");
    out.append(&2u32.to_be_bytes());
    let count = u32::try_from(objects.len()).map_err(std::io::Error::other)?;
    out.append(&count.to_be_bytes());
    // One compressor for every entry: creating one allocates and clears its window.
    let mut deflate = gix::zlib::stream::deflate::Write::new(out.clone(), gix::zlib::Compression::BEST_SPEED);
    for (kind, data) in objects.values() {
        let type_id: u8 = match kind {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
            Kind::Tag => 4,
        };
        // Entry header: the type, then the size in little-endian base-128.
        let mut size = data.len();
        let mut byte = (type_id << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            out.append(&[byte | 0x80]);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        out.append(&[byte]);
        deflate.reset();
        deflate.write_all(data)?;
        deflate.flush()?;
    }
    drop(deflate);
    let mut out = out.0.take();
    let mut hasher = gix::hash::hasher(hash);
    hasher.update(&out);
    let checksum = hasher.try_finalize().map_err(std::io::Error::other)?;
    out.extend_from_slice(checksum.as_bytes());
    Ok(out)
}

/// A byte buffer the compressor and the entry headers both append to.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Shared {
    fn append(&self, bytes: &[u8]) {
        self.0.borrow_mut().extend_from_slice(bytes);
    }
}

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
