//! Writes a batch's new objects as one pack, instead of one loose file per object.
//!
//! A commit here makes about six objects (blob, trees on the path, commit). As loose
//! objects that is six new inodes per commit, and inode creation dominated the
//! profile. One pack per batch is three small files however large the batch. The
//! trees a commit changed are stored as deltas of the same directories in its parent
//! commit when those are in the pack ([`super::delta`]); everything else is stored
//! whole. The index is written here too, since we already know every object's id,
//! offset and CRC, so nothing is inflated or hashed a second time.
//! [`super::compact`] later folds the packs together.
//!
//! Order on disk: `.keep` first (so neither a fold nor a `git repack` takes the pack
//! until the branch names its objects), then the pack, then its index, each written
//! under a temporary name and renamed, so a reader never sees half a pack.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use gix::hash::ObjectId;
use gix::objs::Kind;
use gix::odb::memory::Storage;

/// A written pack; [`Written::release`] drops its `.keep` once the branch points at
/// its objects.
pub(super) struct Written {
    files: Vec<PathBuf>,
    keep: Option<PathBuf>,
    /// The pack's size (0 when it was there already).
    pub(super) bytes: u64,
    /// See [`super::delta::Plan::hints`].
    pub(super) hints: Vec<super::delta::Hint>,
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

    /// The pack's path, unless the batch had no objects.
    pub(super) fn pack(&self) -> Option<&Path> {
        self.files.first().map(PathBuf::as_path)
    }

    pub(super) fn release(self) -> std::io::Result<()> {
        match self.keep {
            Some(keep) => std::fs::remove_file(keep),
            None => Ok(()),
        }
    }
}

/// Writes every object of `objects` into one new pack under `objects_dir/pack`.
/// `outside` reads the objects of earlier packs, for [`Written::hints`].
pub(super) fn write(
    objects_dir: &Path,
    objects: &Storage,
    hash: gix::hash::Kind,
    outside: super::delta::Outside,
) -> std::io::Result<Written> {
    if objects.is_empty() {
        return Ok(Written {
            files: Vec::new(),
            keep: None,
            bytes: 0,
            hints: Vec::new(),
        });
    }
    let Encoded {
        pack,
        mut entries,
        checksum,
        hints,
    } = encode(objects, hash, Some(outside))?;
    let index = encode_index(&mut entries, &checksum, hash)?;

    let dir = objects_dir.join("pack");
    std::fs::create_dir_all(&dir)?;
    let base = dir.join(format!("pack-{}", checksum.to_hex()));
    let pack_path = base.with_extension("pack");
    let index_path = base.with_extension("idx");
    if index_path.exists() {
        // The same objects in the same order: that pack is already complete.
        return Ok(Written {
            files: vec![pack_path, index_path],
            keep: None,
            bytes: 0,
            hints,
        });
    }
    let keep = base.with_extension("keep");
    // Renamed into place, so a crash never leaves a `.keep` without our marker.
    write_renamed(&keep, b"kubescribe: not yet named by a branch\n")?;
    let result = write_renamed(&pack_path, &pack).and_then(|()| write_renamed(&index_path, &index));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&pack_path);
        let _ = std::fs::remove_file(&keep);
        return Err(e);
    }
    Ok(Written {
        files: vec![pack_path, index_path],
        keep: Some(keep),
        bytes: pack.len() as u64,
        hints,
    })
}

fn write_renamed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let result = std::fs::File::create(&temp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// One pack entry: its object, where it starts, and the CRC32 of its packed bytes.
pub(super) struct Entry {
    pub(super) id: ObjectId,
    pub(super) offset: u64,
    pub(super) crc32: u32,
}

/// The bytes of a pack holding `objects`, without an index: what a push sends.
pub(super) fn bytes(objects: &Storage, hash: gix::hash::Kind) -> std::io::Result<Vec<u8>> {
    encode(objects, hash, None).map(|encoded| encoded.pack)
}

/// A pack made in memory.
struct Encoded {
    pack: Vec<u8>,
    entries: Vec<Entry>,
    checksum: ObjectId,
    hints: Vec<super::delta::Hint>,
}

/// A version 2 pack: header, one zlib stream per object, then the checksum; and the
/// plan's hints.
fn encode(
    objects: &Storage,
    hash: gix::hash::Kind,
    outside: Option<super::delta::Outside>,
) -> std::io::Result<Encoded> {
    let capacity = objects
        .values()
        .map(|(_, data)| data.len() / 2 + 16)
        .sum::<usize>()
        + 32;
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    let count = u32::try_from(objects.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&count.to_be_bytes());
    let mut entries: Vec<Entry> = Vec::with_capacity(objects.len());
    let mut deflater = Deflater::new();
    let mut write_entry = |id: ObjectId,
                           type_id: u8,
                           base: Option<u64>,
                           data: &[u8],
                           entries: &mut Vec<Entry>|
     -> std::io::Result<()> {
        let start = out.len();
        out.extend_from_slice(&entry_header(
            type_id,
            data.len(),
            base.map(|base| start as u64 - base),
        ));
        out.extend_from_slice(&deflater.compress(data)?);
        let crc32 = crc32fast::hash(&out[start..]);
        entries.push(Entry {
            id,
            offset: start as u64,
            crc32,
        });
        Ok(())
    };
    let plan = super::delta::plan(objects, hash, outside);
    for id in plan.whole {
        let Some((kind, data)) = objects.get(&id) else {
            continue;
        };
        let type_id: u8 = match kind {
            Kind::Commit => 1,
            Kind::Tree => 2,
            Kind::Blob => 3,
            Kind::Tag => 4,
        };
        write_entry(id, type_id, None, data, &mut entries)?;
    }
    // Each base is written before its delta (see `delta::plan`).
    let mut offsets: gix::hashtable::HashMap<ObjectId, u64> =
        entries.iter().map(|e| (e.id, e.offset)).collect();
    for (id, base, delta) in plan.deltas {
        let base = offsets.get(&base).copied().ok_or_else(|| {
            std::io::Error::other(format!(
                "the base of delta {id} is not in the pack before it"
            ))
        })?;
        write_entry(id, 6, Some(base), &delta, &mut entries)?;
        offsets.insert(id, entries.last().map_or(0, |e| e.offset));
    }
    let mut pack = out;
    let checksum = digest(hash, &pack)?;
    pack.extend_from_slice(checksum.as_bytes());
    Ok(Encoded {
        pack,
        entries,
        checksum,
        hints: plan.hints,
    })
}

/// An entry's header: the type, then the size in little-endian base-128; for an
/// offset delta, how far back its base starts, big-endian base-128 where each
/// continuation also adds one (git's `OFS_DELTA`).
pub(super) fn entry_header(type_id: u8, mut size: usize, distance: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let mut byte = (type_id << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    if let Some(mut distance) = distance {
        let start = out.len();
        out.push((distance & 0x7f) as u8);
        while distance >> 7 > 0 {
            distance = (distance >> 7) - 1;
            out.push(0x80 | (distance & 0x7f) as u8);
        }
        out[start..].reverse();
    }
    out
}

/// The type, the size and the header's length of the entry `bytes` starts with;
/// for an offset delta, also how far back its base starts and the length with it.
pub(super) fn parse_entry_header(bytes: &[u8]) -> Option<(u8, usize, Option<u64>, usize)> {
    let mut at = 0;
    let mut next = || {
        let byte = *bytes.get(at)?;
        at += 1;
        Some(byte)
    };
    let mut byte = next()?;
    let type_id = (byte >> 4) & 0x07;
    let mut size = usize::from(byte & 0x0f);
    let mut shift = 4;
    while byte & 0x80 != 0 {
        byte = next()?;
        size |= usize::from(byte & 0x7f).checked_shl(shift)?;
        shift += 7;
        if shift > 60 {
            return None;
        }
    }
    let distance = if type_id == 6 {
        byte = next()?;
        let mut distance = u64::from(byte & 0x7f);
        while byte & 0x80 != 0 {
            byte = next()?;
            distance = distance
                .checked_add(1)?
                .checked_mul(128)?
                .checked_add(u64::from(byte & 0x7f))?;
        }
        Some(distance)
    } else {
        None
    };
    Some((type_id, size, distance, at))
}

/// A version 2 pack index for `entries`, which it sorts by id.
pub(super) fn encode_index(
    entries: &mut [Entry],
    pack_checksum: &ObjectId,
    hash: gix::hash::Kind,
) -> std::io::Result<Vec<u8>> {
    entries.sort_unstable_by_key(|e| e.id);
    let id_len = hash.len_in_bytes();
    let mut out = Vec::with_capacity(8 + 256 * 4 + entries.len() * (id_len + 8) + 2 * id_len);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for entry in entries.iter() {
        fanout[entry.id.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for entry in entries.iter() {
        out.extend_from_slice(entry.id.as_bytes());
    }
    for entry in entries.iter() {
        out.extend_from_slice(&entry.crc32.to_be_bytes());
    }
    // Offsets past 2 GiB go to a table of 64-bit offsets, marked by the high bit.
    let mut large = Vec::new();
    for entry in entries.iter() {
        if entry.offset < 0x8000_0000 {
            out.extend_from_slice(&(entry.offset as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&(0x8000_0000 | large.len() as u32).to_be_bytes());
            large.push(entry.offset);
        }
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack_checksum.as_bytes());
    let checksum = digest(hash, &out)?;
    out.extend_from_slice(checksum.as_bytes());
    Ok(out)
}

fn digest(hash: gix::hash::Kind, bytes: &[u8]) -> std::io::Result<ObjectId> {
    let mut hasher = gix::hash::hasher(hash);
    hasher.update(bytes);
    hasher.try_finalize().map_err(std::io::Error::other)
}

/// One zlib compressor for many entries: making one allocates and clears a window
/// of a few hundred KiB, which glibc then maps and unmaps each time.
pub(super) struct Deflater {
    out: Shared,
    stream: gix::zlib::stream::deflate::Write<Shared>,
}

impl Deflater {
    pub(super) fn new() -> Self {
        let out = Shared::default();
        let stream =
            gix::zlib::stream::deflate::Write::new(out.clone(), gix::zlib::Compression::BEST_SPEED);
        Self { out, stream }
    }

    /// `data` as one zlib stream.
    pub(super) fn compress(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stream.reset();
        self.stream.write_all(data)?;
        self.stream.flush()?;
        Ok(self.out.0.take())
    }
}

/// The buffer a [`Deflater`]'s stream writes into.
#[derive(Clone, Default)]
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) fn bare_repository() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "--bare"], b"");
        dir
    }

    /// `git verify-pack` (the real git) checks every entry, CRC and checksum.
    #[test]
    fn packs_and_indexes_pass_git_verify_pack() {
        let dir = bare_repository();
        let mut storage = Storage::default();
        let hash = gix::hash::Kind::Sha1;
        let big = vec![b'x'; 100_000];
        for data in [&b"hello\n"[..], &b""[..], &big[..]] {
            let id = gix::objs::compute_hash(hash, Kind::Blob, data).unwrap();
            storage.insert(id, (Kind::Blob, data.to_vec()));
        }
        let written = write(&dir.path().join("objects"), &storage, hash, &|_| None).unwrap();
        written.sync().unwrap();
        let index = written.files[1].clone();
        assert!(written.keep.as_ref().unwrap().exists());
        written.release().unwrap();
        let text = git(
            dir.path(),
            &["verify-pack", "-v", index.to_str().unwrap()],
            b"",
        );
        let text = String::from_utf8_lossy(&text);
        for (id, _) in storage.iter() {
            assert!(
                text.contains(&id.to_hex().to_string()),
                "{id} missing:\n{text}"
            );
        }
        assert!(!index.with_extension("keep").exists());
    }

    pub(in crate::store) fn git(dir: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(dir)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Written from another thread: git answers while it reads, and a full
        // pipe each way would otherwise wait for ever.
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || input.write_all(&stdin).unwrap());
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// A batch of commits, each changing one file of 4,000 directories (a root
    /// tree of 144 KiB, so copies split at 64 KiB), the last one putting back an
    /// earlier tree: git and gix read every object back byte for byte from a pack
    /// whose trees are deltas, `fsck` finds the history whole, and no chain is
    /// longer than `delta::MAX_DEPTH`.
    #[test]
    fn trees_stored_as_deltas_read_back_whole_in_git() {
        let dir = bare_repository();
        let hash = gix::hash::Kind::Sha1;
        let mut storage = Storage::default();
        let mut put = |kind: Kind, data: Vec<u8>| {
            let id = gix::objs::compute_hash(hash, kind, &data).unwrap();
            storage.insert(id, (kind, data));
            id
        };
        let mut dirs: Vec<(String, &[u8], ObjectId)> = (0..4000)
            .map(|d| {
                let blob = put(Kind::Blob, format!("dir {d} version 0\n").into_bytes());
                let sub = put(Kind::Tree, tree(&[("f.yaml".into(), b"100644", blob)]));
                (format!("dir-{d:04}"), &b"40000"[..], sub)
            })
            .collect();
        let mut roots = vec![put(Kind::Tree, tree(&dirs))];
        let mut tip = put(Kind::Commit, commit(roots[0], None, 0));
        for n in 1..=40 {
            let d = n * 97 % 4000;
            let blob = put(Kind::Blob, format!("dir {d} version {n}\n").into_bytes());
            dirs[d].2 = put(Kind::Tree, tree(&[("f.yaml".into(), b"100644", blob)]));
            roots.push(put(Kind::Tree, tree(&dirs)));
            tip = put(Kind::Commit, commit(*roots.last().unwrap(), Some(tip), n));
        }
        // A revert: the tree of commit 20 again.
        tip = put(Kind::Commit, commit(roots[20], Some(tip), 41));

        let written = write(&dir.path().join("objects"), &storage, hash, &|_| None).unwrap();
        let index = written.files[1].clone();
        written.release().unwrap();
        let verify = String::from_utf8(git(
            dir.path(),
            &["verify-pack", "-v", index.to_str().unwrap()],
            b"",
        ))
        .unwrap();
        let chains: Vec<usize> = verify
            .lines()
            .filter_map(|l| l.strip_prefix("chain length = "))
            .filter_map(|l| l.split(':').next()?.parse().ok())
            .collect();
        assert!(
            chains.iter().max() == Some(&(super::super::delta::MAX_DEPTH as usize)),
            "{verify}"
        );
        let deltas = verify
            .lines()
            .filter(|l| l.contains(" tree ") && l.split_whitespace().count() == 7)
            .count();
        // The 40 new roots less the two that start a chain again after 16 deltas;
        // the one-file directories are too small to be worth a delta.
        assert_eq!(deltas, 38, "trees stored as deltas:\n{verify}");

        std::fs::write(dir.path().join("refs/heads/main"), format!("{tip}\n")).unwrap();
        git(
            dir.path(),
            &["fsck", "--full", "--strict", "--no-dangling"],
            b"",
        );
        assert_reads_back(dir.path(), &storage);
    }

    /// A tree's bytes: (name, mode, id) in git's order.
    pub(in crate::store) fn tree(entries: &[(String, &[u8], ObjectId)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, mode, id) in entries {
            out.extend_from_slice(mode);
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    pub(in crate::store) fn commit(tree: ObjectId, parent: Option<ObjectId>, n: usize) -> Vec<u8> {
        let parent = parent.map_or(String::new(), |p| format!("parent {p}\n"));
        format!("tree {tree}\n{parent}author A <a@x> 0 +0000\ncommitter A <a@x> 0 +0000\n\ncommit {n}\n").into_bytes()
    }

    /// git and gix read every object of `storage` back from `dir` byte for byte.
    pub(in crate::store) fn assert_reads_back(dir: &Path, storage: &Storage) {
        let ids: String = storage.keys().map(|id| format!("{id}\n")).collect();
        let batch = git(dir, &["cat-file", "--batch"], ids.as_bytes());
        let mut rest = batch.as_slice();
        for _ in 0..storage.len() {
            let line_end = rest.iter().position(|b| *b == b'\n').unwrap();
            let header = std::str::from_utf8(&rest[..line_end]).unwrap().to_owned();
            let mut fields = header.split(' ');
            let id = ObjectId::from_hex(fields.next().unwrap().as_bytes()).unwrap();
            let size: usize = fields.nth(1).unwrap().parse().unwrap();
            let data = &rest[line_end + 1..line_end + 1 + size];
            assert_eq!(data, storage[&id].1.as_slice(), "{id}");
            rest = &rest[line_end + 1 + size + 1..];
        }
        // And gix, which the store reads with.
        let repo = gix::open(dir).unwrap();
        for (id, (kind, data)) in storage.iter() {
            let object = repo.find_object(*id).unwrap();
            assert_eq!(
                (object.kind, object.data.as_slice()),
                (*kind, data.as_slice())
            );
        }
    }
}
