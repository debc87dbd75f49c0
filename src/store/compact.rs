//! Folds the writer's per-batch packs into larger ones, in the background, by
//! copying their entries into one new pack: nothing is inflated, searched for deltas
//! or compressed again.
//!
//! The writer makes a pack per batch, and every pack costs each object lookup an
//! index search, so packs must be folded together now and then. `git repack` did
//! that, and most of its CPU went to searching deltas for objects it had searched
//! before: more than a third of all the CPU a recorded write cost. Here the entries of
//! the chosen packs are copied back to back instead. A pack's entries stay
//! contiguous and in order, so each offset delta's distance back to its base (always
//! in the same pack) is unchanged, and only the new index is computed. What the copy
//! gives up is git's delta search across different files; the writer already stores
//! a changed tree or file as a delta of its previous version ([`super::delta`]),
//! which is what `git fast-import` stores too. An operator's `git gc` still
//! compresses further, whenever it runs.
//!
//! Which packs: like `git repack --geometric=2`, by bytes. The smallest packs are
//! folded into one so that afterwards each pack is at least twice the size of all
//! the smaller ones together; each byte is then copied about log₂(packs) times over
//! the repository's life.
//!
//! Invariants:
//! - only packs with an index and no `.keep` (the writer keeps a pack until the
//!   branch names it; operators and git keep packs too), `.promisor` or `.mtimes`;
//! - every entry's CRC32 is checked against its index as it is copied, and each
//!   source pack's header and checksum against its index, so damage is never copied
//!   into a pack with a fresh checksum;
//! - the new pack and its index are on disk (flushed, renamed, directory flushed)
//!   before any old pack is removed, and each old index goes before its pack, so a
//!   reader never finds an index without its pack. A crash in between leaves objects
//!   in two packs, which git allows;
//! - an object in two of the chosen packs is copied once, and a delta on its second
//!   copy is pointed at the first: the same object, however each copy is stored;
//! - what git must handle is left to `git repack`: a version 1 index, a
//!   multi-pack-index.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gix::hash::ObjectId;

use super::delta::MAX_DEPTH;
use super::pack::{self, Entry};

/// Each pack left after a fold is at least this many times the bytes of all the
/// smaller packs together (`git repack --geometric=2`).
const FACTOR: u64 = 2;

/// Hints are dropped past this many, all at once: they only save disk.
const MAX_HINTS: usize = 20_000;

/// How a fold ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The packs already grow geometrically.
    Nothing,
    /// `packs` packs holding `objects` objects are now one pack of `bytes` bytes, in
    /// which `deltas` objects stored whole before are deltas of their previous
    /// version.
    Folded {
        packs: usize,
        objects: usize,
        bytes: u64,
        deltas: usize,
    },
    /// Only `git repack` can fold these packs, for this reason.
    NeedsGit(&'static str),
}

/// What the writer knows about its packs that the disk does not say, shared with
/// the fold.
#[derive(Clone, Default)]
pub(super) struct Ledger(Arc<LedgerShared>);

#[derive(Default)]
struct LedgerShared {
    state: Mutex<LedgerState>,
    /// Held while the writer writes and flushes a pack, and while a fold removes
    /// the packs it folded: the writer skips writing a pack whose index is there
    /// already, and must not find one the fold is removing.
    removing: Mutex<()>,
    /// Set at shutdown: a running fold stops (and removes what it wrote).
    stop: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct LedgerState {
    /// Objects the writer stored whole though their path's previous version was in
    /// an earlier pack: object → that version ([`super::delta::Plan::hints`]).
    hints: gix::hashtable::HashMap<ObjectId, ObjectId>,
    /// The order packs were written in, by path without extension: a fold copies
    /// older packs first, so a hint's base comes before its object. Modification
    /// times cannot say: they tie within the clock's tick. Packs of an earlier run
    /// are not here, and count as oldest (they hold no hinted objects).
    order: std::collections::HashMap<PathBuf, u64>,
    next: u64,
    /// Packs a fold found damaged: left out of later folds, and logged once.
    damaged: std::collections::HashSet<PathBuf>,
}

impl Ledger {
    fn state(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a pack the writer wrote (its path without extension), with its hints.
    pub(super) fn written(&self, stem: PathBuf, hints: Vec<super::delta::Hint>) {
        let mut state = self.state();
        state.next += 1;
        let next = state.next;
        state.order.insert(stem, next);
        if state.hints.len() + hints.len() > MAX_HINTS {
            state.hints.clear();
        }
        state.hints.extend(hints);
    }

    /// Held while the writer writes and flushes a pack; see [`LedgerShared::removing`].
    pub(super) fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.removing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks a running fold to stop.
    pub(super) fn stop(&self) {
        self.0
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.0.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets packs no longer on disk (`names` is a listing of the pack
    /// directory made after `next` was read: packs written since are kept).
    fn forget_missing(&self, dir: &Path, names: &std::collections::HashSet<String>, next: u64) {
        let on_disk = |stem: &PathBuf| {
            stem.parent() == Some(dir)
                && stem
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| names.contains(&format!("{n}.pack")))
        };
        let mut state = self.state();
        state.order.retain(|stem, n| *n > next || on_disk(stem));
        state.damaged.retain(|stem| on_disk(stem));
    }

    /// After a fold into `stem` of `sources` holding `folded` (sorted by id): the
    /// new pack takes the place of the newest source in the order, and the hints of
    /// the folded objects go (they were used, or their base was in a pack left out,
    /// and keeping them for a later fold with that one is not worth the memory).
    fn folded(&self, stem: PathBuf, sources: &[Source], folded: &[Entry]) {
        let mut state = self.state();
        let newest = sources
            .iter()
            .filter_map(|s| state.order.remove(&s.candidate.stem))
            .max();
        if let Some(newest) = newest {
            state.order.insert(stem, newest);
        }
        state
            .hints
            .retain(|id, _| folded.binary_search_by_key(id, |e| e.id).is_err());
    }
}

/// A pack the fold may take.
struct Candidate {
    /// Its path without the extension.
    stem: PathBuf,
    bytes: u64,
    /// Where it comes in the order packs were written (0: unknown, oldest).
    written: u64,
}

/// A chosen pack: its entries by offset, and the checksum its index names.
struct Source<'a> {
    candidate: &'a Candidate,
    checksum: ObjectId,
    entries: Vec<Entry>,
}

/// Folds the smallest packs of `git_dir` into one, as many as it takes for the
/// packs to grow geometrically again, using the `ledger`'s hints for deltas across
/// them.
pub(super) fn fold(
    git_dir: &Path,
    hash: gix::hash::Kind,
    ledger: &Ledger,
) -> std::io::Result<Outcome> {
    let dir = git_dir.join("objects").join("pack");
    if dir.join("multi-pack-index").exists() || dir.join("multi-pack-index.d").exists() {
        return Ok(Outcome::NeedsGit("a multi-pack-index lists the packs"));
    }
    let mut candidates = candidates(&dir, ledger)?;
    candidates.sort_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.stem.cmp(&b.stem)));
    let sizes: Vec<u64> = candidates.iter().map(|c| c.bytes).collect();
    let take = geometric(&sizes);
    if take < 2 {
        return Ok(Outcome::Nothing);
    }
    let mut chosen: Vec<&Candidate> = candidates[..take].iter().collect();
    // Oldest first, so a path's earlier version (a hint's base) comes before it.
    chosen.sort_by(|a, b| a.written.cmp(&b.written).then_with(|| a.stem.cmp(&b.stem)));

    let mut sources = Vec::with_capacity(take);
    let mut ids: Vec<ObjectId> = Vec::new();
    for candidate in chosen.iter().copied() {
        let index_path = candidate.stem.with_extension("idx");
        let index = match gix::odb::pack::index::File::at(&index_path, hash) {
            Ok(index) => index,
            Err(e) => {
                ledger.state().damaged.insert(candidate.stem.clone());
                return Err(damaged(&index_path, &format!("cannot be read ({e})")));
            }
        };
        if index.version() != gix::odb::pack::index::Version::V2 {
            return Ok(Outcome::NeedsGit("a pack has a version 1 index"));
        }
        // Its ids and offsets are copied into the new index: a flipped bit there
        // would lose an object.
        if index
            .verify_checksum(&mut gix::progress::Discard, &ledger.0.stop)
            .is_err()
        {
            if ledger.stopping() {
                return Err(std::io::Error::other("kubescribe is shutting down"));
            }
            ledger.state().damaged.insert(candidate.stem.clone());
            return Err(damaged(&index_path, "does not match its checksum"));
        }
        let mut entries: Vec<Entry> = index
            .iter()
            .map(|entry| Entry {
                id: entry.oid,
                offset: entry.pack_offset,
                crc32: entry.crc32.unwrap_or_default(),
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.offset);
        ids.extend(entries.iter().map(|e| e.id));
        sources.push(Source {
            candidate,
            checksum: index.pack_checksum(),
            entries,
        });
    }
    // An object can be in two packs (a revert writes an old tree again): the new
    // pack holds it once.
    ids.sort_unstable();
    let duplicated: gix::hashtable::HashSet<ObjectId> = ids
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    ids.dedup();
    let count = u32::try_from(ids.len()).map_err(std::io::Error::other)?;
    drop(ids);

    // Not `*.pack` and `*.idx`: git and gix take any such pair for a pack, and the
    // index is written after the pack. Recovery removes `tmp_*` after a crash.
    let temp_pack = dir.join(format!("tmp_fold_{}_pack", std::process::id()));
    let temp_index = dir.join(format!("tmp_fold_{}_idx", std::process::id()));
    let mut copier = Copier {
        hash,
        git_dir,
        ledger,
        hints: ledger.state().hints.clone(),
        bases: Default::default(),
        duplicated,
        first_copies: Default::default(),
        reader: None,
        deflater: pack::Deflater::new(),
        deltas: 0,
    };
    let written =
        copier
            .write(&temp_pack, count, &sources)
            .and_then(|(checksum, mut entries, bytes)| {
                let index = pack::encode_index(&mut entries, &checksum, hash)?;
                let mut file = std::fs::File::create(&temp_index)?;
                file.write_all(&index)?;
                file.sync_all()?;
                Ok((checksum, entries, bytes))
            });
    let (checksum, entries, bytes) = match written {
        Ok(written) => written,
        Err(e) => {
            let _ = std::fs::remove_file(&temp_pack);
            let _ = std::fs::remove_file(&temp_index);
            return Err(e);
        }
    };
    let stem = dir.join(format!("pack-{}", checksum.to_hex()));
    // The pack before its index: a reader finds packs through their indexes. If
    // either rename fails, the old packs still hold everything.
    let existed = stem.with_extension("pack").exists();
    let renamed = std::fs::rename(&temp_pack, stem.with_extension("pack"))
        .and_then(|()| std::fs::rename(&temp_index, stem.with_extension("idx")))
        .and_then(|()| std::fs::File::open(&dir)?.sync_all());
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&temp_pack);
        let _ = std::fs::remove_file(&temp_index);
        if !existed && !stem.with_extension("idx").exists() {
            let _ = std::fs::remove_file(stem.with_extension("pack"));
        }
        return Err(e);
    }
    ledger.folded(stem.clone(), &sources, &entries);

    {
        let _writer_waits = ledger.writing();
        for candidate in chosen.iter().filter(|c| c.stem != stem) {
            // Written again by a batch since (the same objects make the same pack):
            // the batch's now.
            if candidate.stem.with_extension("keep").exists() {
                continue;
            }
            // The index first: a reader looks a pack up through its index.
            for extension in ["idx", "pack", "rev", "bitmap"] {
                match std::fs::remove_file(candidate.stem.with_extension(extension)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(Outcome::Folded {
        packs: take,
        objects: entries.len(),
        bytes,
        deltas: copier.deltas,
    })
}

/// Bytes of a pack's header: `PACK`, the version and the object count.
const HEADER: u64 = 12;

/// The packs of `dir` that may be folded.
fn candidates(dir: &Path, ledger: &Ledger) -> std::io::Result<Vec<Candidate>> {
    let next = ledger.state().next;
    let names: std::collections::HashSet<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ledger.forget_missing(dir, &names, next);
    let mut out = Vec::new();
    for name in &names {
        let Some(stem) = name.strip_suffix(".pack") else {
            continue;
        };
        let has = |extension: &str| names.contains(&format!("{stem}.{extension}"));
        if !stem.starts_with("pack-")
            || !has("idx")
            || has("keep")
            || has("promisor")
            || has("mtimes")
        {
            continue;
        }
        let stem = dir.join(stem);
        let bytes = match std::fs::metadata(dir.join(name)) {
            Ok(meta) => meta.len(),
            // Removed since the listing, by git or an operator.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // A listing made while the writer adds a pack can show the pack without the
        // `.keep` made before it; asked now, that `.keep` is there until the branch
        // names the pack.
        if stem.with_extension("keep").exists() {
            continue;
        }
        out.push(Candidate {
            stem,
            bytes,
            written: 0,
        });
    }
    let state = ledger.state();
    out.retain(|c| !state.damaged.contains(&c.stem));
    for candidate in &mut out {
        candidate.written = state.order.get(&candidate.stem).copied().unwrap_or(0);
    }
    Ok(out)
}

/// How many of `sizes` (ascending) to fold into one: all up to the largest pack
/// smaller than [`FACTOR`] times the packs before it together. Every pack after
/// that is at least [`FACTOR`] times everything before it, the fold included.
fn geometric(sizes: &[u64]) -> usize {
    let mut before = 0u64;
    let mut take = 0;
    for (i, size) in sizes.iter().enumerate() {
        if i > 0 && *size < before.saturating_mul(FACTOR) {
            take = i + 1;
        }
        before = before.saturating_add(*size);
    }
    take
}

/// Copies the chosen packs' entries into one pack.
struct Copier<'a> {
    hash: gix::hash::Kind,
    git_dir: &'a Path,
    ledger: &'a Ledger,
    hints: gix::hashtable::HashMap<ObjectId, ObjectId>,
    /// Hints' bases already in the new pack: their offset and delta depth.
    bases: gix::hashtable::HashMap<ObjectId, (u64, u32)>,
    /// Objects in more than one of the chosen packs, and where the first copy went.
    duplicated: gix::hashtable::HashSet<ObjectId>,
    first_copies: gix::hashtable::HashMap<ObjectId, (u64, u32)>,
    /// Reads objects for the hints' deltas; opened on first use (`Some(None)`: it
    /// could not be).
    reader: Option<Option<gix::Repository>>,
    deflater: pack::Deflater,
    deltas: usize,
}

impl Copier<'_> {
    /// Writes the new pack to `path`: one header, each source's entries checked and
    /// copied in order (an offset delta's distance to its base recomputed, a hinted
    /// object stored as a delta of its base), then the checksum. Returns the
    /// checksum, the entries and the pack's size.
    fn write(
        &mut self,
        path: &Path,
        count: u32,
        sources: &[Source],
    ) -> std::io::Result<(ObjectId, Vec<Entry>, u64)> {
        let wanted: gix::hashtable::HashSet<ObjectId> = self.hints.values().copied().collect();
        let mut out = Output {
            file: std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?),
            hasher: gix::hash::hasher(self.hash),
            position: 0,
        };
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(b"PACK");
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(&count.to_be_bytes());
        out.emit(&header)?;
        let mut written: Vec<Entry> = Vec::with_capacity(count as usize);
        let mut buffer = Vec::new();
        for source in sources {
            let copied = self.copy(source, &wanted, &mut out, &mut written, &mut buffer);
            if let Err(e) = copied {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    self.ledger
                        .state()
                        .damaged
                        .insert(source.candidate.stem.clone());
                }
                return Err(e);
            }
        }
        if written.len() != count as usize {
            return Err(std::io::Error::other(format!(
                "a fold copied {} objects into a pack whose header says {count}",
                written.len()
            )));
        }
        let (checksum, bytes) = out.finish()?;
        Ok((checksum, written, bytes))
    }

    /// Copies one source's entries to `out` and notes each in `written`.
    fn copy(
        &mut self,
        source: &Source,
        wanted: &gix::hashtable::HashSet<ObjectId>,
        out: &mut Output,
        written: &mut Vec<Entry>,
        buffer: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let id_len = self.hash.len_in_bytes();
        let pack_path = source.candidate.stem.with_extension("pack");
        let end = source
            .candidate
            .bytes
            .checked_sub(id_len as u64)
            .filter(|end| *end >= HEADER)
            .ok_or_else(|| damaged(&pack_path, "is too short for a pack"))?;
        let mut input =
            std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(&pack_path)?);
        let mut read = |buffer: &mut [u8]| {
            input.read_exact(buffer).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    damaged(&pack_path, "ends before its index says it does")
                }
                _ => e,
            })
        };
        let mut head = [0u8; HEADER as usize];
        read(&mut head)?;
        let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let objects = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if &head[..4] != b"PACK"
            || !(2..=3).contains(&version)
            || objects as usize != source.entries.len()
        {
            return Err(damaged(
                &pack_path,
                "has a header that does not match its index",
            ));
        }
        let mut at = HEADER;
        // Where each entry of this pack went, and its delta depth.
        let mut placed: Vec<(u64, u32)> = Vec::with_capacity(source.entries.len());
        for (i, entry) in source.entries.iter().enumerate() {
            if self.ledger.stopping() {
                return Err(std::io::Error::other("kubescribe is shutting down"));
            }
            let next = source.entries.get(i + 1).map_or(end, |e| e.offset);
            if entry.offset != at || next <= at || next > end {
                return Err(damaged(
                    &pack_path,
                    "has an index whose offsets do not tile it",
                ));
            }
            buffer.resize((next - at) as usize, 0);
            read(buffer)?;
            if crc32fast::hash(buffer) != entry.crc32 {
                return Err(damaged(
                    &pack_path,
                    &format!("has an entry at offset {at} that fails its CRC32"),
                ));
            }
            if let Some(first) = self.first_copies.get(&entry.id) {
                // Copied already: a delta of this pack on it uses that copy.
                placed.push(*first);
                at = next;
                continue;
            }
            let (type_id, size, distance, header_len) = pack::parse_entry_header(buffer)
                .ok_or_else(|| {
                    damaged(
                        &pack_path,
                        &format!("has an unreadable entry at offset {at}"),
                    )
                })?;
            if !matches!(type_id, 1..=4 | 6 | 7) {
                return Err(damaged(
                    &pack_path,
                    &format!("has an entry of no type at offset {at}"),
                ));
            }
            let offset = out.position;
            let mut crc = crc32fast::Hasher::new();
            let depth = if let Some((delta, base_offset, depth)) = self.hinted(entry.id, type_id) {
                let head = pack::entry_header(6, delta.len(), Some(offset - base_offset));
                let data = self.deflater.compress(&delta)?;
                crc.update(&head);
                crc.update(&data);
                out.emit(&head)?;
                out.emit(&data)?;
                self.deltas += 1;
                depth
            } else if let Some(distance) = distance {
                // Its base is earlier in this same pack, wherever that went.
                let base = entry
                    .offset
                    .checked_sub(distance)
                    .and_then(|base| {
                        source.entries[..i]
                            .binary_search_by_key(&base, |e| e.offset)
                            .ok()
                    })
                    .ok_or_else(|| {
                        damaged(
                            &pack_path,
                            &format!("has a delta at offset {at} whose base is not an entry"),
                        )
                    })?;
                let (base_offset, base_depth) = placed[base];
                let head = pack::entry_header(6, size, Some(offset - base_offset));
                crc.update(&head);
                crc.update(&buffer[header_len..]);
                out.emit(&head)?;
                out.emit(&buffer[header_len..])?;
                base_depth.saturating_add(1)
            } else {
                crc.update(buffer);
                out.emit(buffer)?;
                // A delta whose base is named by id is never a hint's base.
                if type_id == 7 {
                    u32::MAX
                } else {
                    0
                }
            };
            placed.push((offset, depth));
            if wanted.contains(&entry.id) {
                self.bases.insert(entry.id, (offset, depth));
            }
            if self.duplicated.contains(&entry.id) {
                self.first_copies.insert(entry.id, (offset, depth));
            }
            written.push(Entry {
                id: entry.id,
                offset,
                crc32: crc.finalize(),
            });
            at = next;
        }
        if at != end {
            return Err(damaged(&pack_path, "has bytes its index does not name"));
        }
        buffer.resize(id_len, 0);
        read(buffer)?;
        if buffer != source.checksum.as_bytes() {
            return Err(damaged(
                &pack_path,
                "ends in a checksum its index does not name",
            ));
        }
        Ok(())
    }

    /// The delta to store `id` (of pack type `type_id`) as, its base's offset in
    /// the new pack and its depth, when a hint names its base, that base is already
    /// in the new pack, the chain stays short and the delta is worth it and checked.
    fn hinted(&mut self, id: ObjectId, type_id: u8) -> Option<(Vec<u8>, u64, u32)> {
        if !(1..=4).contains(&type_id) {
            return None;
        }
        let base = *self.hints.get(&id)?;
        let (base_offset, base_depth) = *self.bases.get(&base)?;
        if base_depth >= MAX_DEPTH {
            return None;
        }
        let reader = self
            .reader
            .get_or_insert_with(|| {
                gix::open_opts(self.git_dir, gix::open::Options::isolated()).ok()
            })
            .as_ref()?;
        let target = reader.find_object(id).ok()?.detach();
        let base = reader.find_object(base).ok()?.detach();
        if target.kind != base.kind {
            return None;
        }
        let delta = super::delta::encode(&base.data, &target.data)?;
        (super::delta::apply(&base.data, &delta).as_deref() == Some(target.data.as_slice()))
            .then_some((delta, base_offset, base_depth + 1))
    }
}

/// The new pack's file, and the checksum of what went into it.
struct Output {
    file: std::io::BufWriter<std::fs::File>,
    hasher: gix::hash::Hasher,
    position: u64,
}

impl Output {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.position += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    /// Appends the checksum and flushes the file to disk; the checksum and the
    /// pack's size.
    fn finish(mut self) -> std::io::Result<(ObjectId, u64)> {
        let checksum = self.hasher.try_finalize().map_err(std::io::Error::other)?;
        self.file.write_all(checksum.as_bytes())?;
        self.file
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok((checksum, self.position + checksum.as_bytes().len() as u64))
    }
}

fn damaged(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} {what}; it was left as it is: run `git fsck` on the repository",
            path.display()
        ),
    )
}

/// A fold, or a `git repack`, running next to the writer.
pub(super) enum Running {
    Fold(std::thread::JoinHandle<std::io::Result<Outcome>>),
    Git(std::process::Child),
}

/// How a [`Running`] ended.
pub(super) enum Ended {
    Fold(std::io::Result<Outcome>),
    Git(std::io::Result<std::process::ExitStatus>),
}

/// What the writer does after a [`Running`] ended.
pub(super) enum Next {
    Nothing,
    /// Open the repository again, so gix sees the packs on disk now.
    Reopen,
    /// Have `git repack` fold the packs.
    RunGit,
}

impl Ended {
    /// Logs how it ended, and says what comes next and how to count it.
    pub(super) fn report(self) -> (Next, &'static str) {
        let next = match &self {
            Ended::Fold(Ok(Outcome::Nothing)) => Next::Nothing,
            Ended::Fold(Ok(Outcome::NeedsGit(_))) => Next::RunGit,
            _ => Next::Reopen,
        };
        let result = match self {
            Ended::Fold(Ok(Outcome::Nothing)) => "nothing",
            Ended::Fold(Ok(Outcome::Folded {
                packs,
                objects,
                bytes,
                deltas,
            })) => {
                tracing::debug!(packs, objects, bytes, deltas, "folded packs");
                "folded"
            }
            Ended::Fold(Ok(Outcome::NeedsGit(reason))) => {
                tracing::info!(
                    reason,
                    "these packs need git to fold them; running git repack"
                );
                "needs_git"
            }
            Ended::Fold(Err(e)) => {
                tracing::warn!(error = %e, "cannot fold packs; they accumulate until the next try");
                "failed"
            }
            Ended::Git(Ok(status)) if !status.success() => {
                tracing::warn!(%status, "git repack failed; packs accumulate until the next try");
                "repack_failed"
            }
            Ended::Git(Ok(_)) => {
                tracing::debug!("repacked");
                "repacked"
            }
            Ended::Git(Err(e)) => {
                tracing::warn!(error = %e, "cannot wait for git repack");
                "repack_failed"
            }
        };
        (next, result)
    }
}

impl Running {
    /// Starts a [`fold`] on its own thread, which inherits the writer thread's
    /// niceness.
    pub(super) fn fold(
        git_dir: PathBuf,
        hash: gix::hash::Kind,
        ledger: Ledger,
    ) -> std::io::Result<Self> {
        std::thread::Builder::new()
            .name("kubescribe-fold".to_owned())
            .spawn(move || fold(&git_dir, hash, &ledger))
            .map(Running::Fold)
    }

    /// Starts `nice git repack -d -q --geometric=2`, for what a fold leaves to git.
    pub(super) fn git(git_dir: &Path, niceness: i32) -> std::io::Result<Self> {
        let mut repack = std::process::Command::new("nice");
        repack
            .arg("-n")
            .arg(niceness.to_string())
            .args(["git", "--git-dir"])
            .arg(git_dir)
            .args(["repack", "-d", "-q", "--geometric=2"])
            .stdin(std::process::Stdio::null());
        // A repack never outlives this writer: SIGTERM (git then removes its
        // temporary packs) when the writer's thread ends, however the process ends.
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            repack.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        repack.spawn().map(Running::Git)
    }

    /// How it ended, or itself while it runs.
    pub(super) fn try_end(self) -> Result<Ended, Self> {
        match self {
            Running::Fold(thread) if !thread.is_finished() => Err(Running::Fold(thread)),
            Running::Git(mut child) => match child.try_wait() {
                Ok(None) => Err(Running::Git(child)),
                Ok(Some(status)) => Ok(Ended::Git(Ok(status))),
                Err(e) => Ok(Ended::Git(Err(e))),
            },
            ended => Ok(ended.wait()),
        }
    }

    /// Waits for it to end.
    pub(super) fn wait(self) -> Ended {
        match self {
            Running::Fold(thread) => Ended::Fold(
                thread
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the fold's thread panicked"))),
            ),
            Running::Git(mut child) => Ended::Git(child.wait()),
        }
    }
}

#[cfg(test)]
mod tests {
    use gix::objs::Kind;
    use gix::odb::memory::Storage;

    use super::super::pack::tests::{assert_reads_back, bare_repository, commit, git, tree};
    use super::*;

    #[test]
    fn the_smallest_packs_fold_until_each_is_twice_the_ones_below() {
        assert_eq!(geometric(&[]), 0);
        assert_eq!(geometric(&[5]), 0);
        assert_eq!(geometric(&[1, 2, 6, 18]), 0, "already geometric");
        assert_eq!(geometric(&[1, 2, 4, 8]), 4, "4 is not twice 1 + 2");
        assert_eq!(geometric(&[1, 1, 1, 1, 64]), 4);
        // 32 batches next to a pack as large as all of them: everything.
        let mut sizes = vec![1; 32];
        sizes.push(32);
        assert_eq!(geometric(&sizes), 33);
        // A large pack after a small one that breaks the progression.
        assert_eq!(geometric(&[1, 1, 3, 100]), 3);
    }

    /// A repository as the writer leaves it under one write at a time: a first pack
    /// of 4 directories of 150 files, then a pack per commit, each changing one file.
    /// Returns every object, the hints, the tip and the packs' stems.
    fn history(dir: &Path, commits: usize) -> (Storage, Ledger, ObjectId) {
        let hash = gix::hash::Kind::Sha1;
        let mut all = Storage::default();
        let ledger = Ledger::default();
        let file = |d: usize, f: usize, version: usize| {
            let mut text = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: f{f}\n  namespace: ns-{d}\ndata:\n  version: '{version}'\n");
            for line in 0..40 {
                text.push_str(&format!("  key-{line}: value of key {line} in file {f}\n"));
            }
            text.into_bytes()
        };
        let mut batch = Storage::default();
        let put = |batch: &mut Storage, kind: Kind, data: Vec<u8>| {
            let id = gix::objs::compute_hash(hash, kind, &data).unwrap();
            batch.insert(id, (kind, data));
            id
        };
        let mut dirs: Vec<Vec<(String, &[u8], ObjectId)>> = (0..4)
            .map(|d| {
                (0..150)
                    .map(|f| {
                        let blob = put(&mut batch, Kind::Blob, file(d, f, 0));
                        (format!("f{f:03}.yaml"), &b"100644"[..], blob)
                    })
                    .collect()
            })
            .collect();
        // The root, and the directory `changed` (all of them at first).
        let root = |batch: &mut Storage,
                    dirs: &[Vec<(String, &[u8], ObjectId)>],
                    changed: Option<usize>| {
            let subtrees: Vec<(String, &[u8], ObjectId)> = dirs
                .iter()
                .enumerate()
                .map(|(d, entries)| {
                    let id = gix::objs::compute_hash(hash, Kind::Tree, &tree(entries)).unwrap();
                    if changed.is_none_or(|c| c == d) {
                        batch.insert(id, (Kind::Tree, tree(entries)));
                    }
                    (format!("ns-{d}"), &b"40000"[..], id)
                })
                .collect();
            let id = gix::objs::compute_hash(hash, Kind::Tree, &tree(&subtrees)).unwrap();
            batch.insert(id, (Kind::Tree, tree(&subtrees)));
            id
        };
        let first = root(&mut batch, &dirs, None);
        let mut tip = put(&mut batch, Kind::Commit, commit(first, None, 0));
        for n in 0..=commits {
            if n > 0 {
                let (d, f) = (n % 4, n * 7 % 150);
                let blob = put(&mut batch, Kind::Blob, file(d, f, n));
                dirs[d][f].2 = blob;
                let tree = root(&mut batch, &dirs, Some(d));
                tip = put(&mut batch, Kind::Commit, commit(tree, Some(tip), n));
            }
            // As the writer: the objects already written are "outside".
            let outside = |id: &ObjectId| all.get(id).map(|(_, data)| data.clone());
            let mut written = pack::write(&dir.join("objects"), &batch, hash, &outside).unwrap();
            let stem = written.pack().unwrap().with_extension("");
            ledger.written(stem, std::mem::take(&mut written.hints));
            written.release().unwrap();
            for (id, object) in batch.drain() {
                all.insert(id, object);
            }
        }
        std::fs::write(dir.join("refs/heads/main"), format!("{tip}\n")).unwrap();
        (all, ledger, tip)
    }

    /// A pack `git pack-objects` (with `option`) makes of the objects `revs` reach:
    /// its path without the extension.
    fn git_pack(dir: &Path, revs: &[&str], option: &str) -> PathBuf {
        let mut args = vec!["rev-list", "--objects"];
        args.extend_from_slice(revs);
        let list = git(dir, &args, b"");
        let ids: Vec<u8> = list
            .split(|b| *b == b'\n')
            .filter(|l| l.len() >= 40)
            .flat_map(|l| l[..40].iter().copied().chain([b'\n']))
            .collect();
        let stem = dir.join("objects/pack/pack");
        let name = git(
            dir,
            &["pack-objects", "-q", option, stem.to_str().unwrap()],
            &ids,
        );
        dir.join(format!(
            "objects/pack/pack-{}",
            String::from_utf8(name).unwrap().trim()
        ))
    }

    /// `git fsck` finds the history whole, and git and gix read every object back.
    fn assert_whole(dir: &Path, all: &Storage) {
        git(dir, &["fsck", "--full", "--strict", "--no-dangling"], b"");
        assert_reads_back(dir, all);
    }

    fn packs(dir: &Path) -> Vec<PathBuf> {
        let mut packs: Vec<PathBuf> = std::fs::read_dir(dir.join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        packs.sort();
        packs
    }

    fn verify(dir: &Path, pack: &Path) -> String {
        let index = pack.with_extension("idx");
        String::from_utf8(git(
            dir,
            &["verify-pack", "-v", index.to_str().unwrap()],
            b"",
        ))
        .unwrap()
    }

    /// Deltas of each kind in `git verify-pack -v`'s listing.
    fn deltas(verify: &str, kind: &str) -> usize {
        verify
            .lines()
            .filter(|l| l.contains(&format!(" {kind} ")) && l.split_whitespace().count() == 7)
            .count()
    }

    /// The writer's packs fold into one that git and gix read back byte for byte;
    /// the trees and files each commit changed, stored whole because their previous
    /// version was in an earlier pack, become deltas of it there; fsck finds the
    /// history whole and no chain is longer than the writer's.
    #[test]
    fn packs_fold_into_one_and_hinted_objects_become_deltas() {
        let dir = bare_repository();
        let (all, ledger, _) = history(dir.path(), 40);
        assert_eq!(packs(dir.path()).len(), 41);
        let before: usize = packs(dir.path())
            .iter()
            .map(|p| {
                deltas(&verify(dir.path(), p), "tree") + deltas(&verify(dir.path(), p), "blob")
            })
            .sum();
        assert_eq!(before, 0, "one commit per pack: no base in the same pack");
        // Each commit: its root, the directory and the file, whole.
        assert_eq!(ledger.state().hints.len(), 40 * 3);

        let outcome = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap();
        let Outcome::Folded {
            packs: folded,
            objects,
            deltas: made,
            bytes,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!((folded, objects), (41, all.len()));
        let left = packs(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(std::fs::metadata(&left[0]).unwrap().len(), bytes);
        let listing = verify(dir.path(), &left[0]);
        // Every root and directory; every file but the ones too different to be
        // worth it (none here); chains of at most 16 restart once each.
        let (trees, blobs) = (deltas(&listing, "tree"), deltas(&listing, "blob"));
        assert_eq!(made, trees + blobs, "{listing}");
        assert!(trees >= 2 * 40 - 6, "tree deltas: {trees}\n{listing}");
        assert_eq!(blobs, 40, "{listing}");
        let longest = listing
            .lines()
            .filter_map(|l| l.strip_prefix("chain length = "))
            .filter_map(|l| l.split(':').next()?.parse::<u32>().ok())
            .max();
        assert_eq!(longest, Some(MAX_DEPTH), "{listing}");
        assert!(ledger.state().hints.is_empty(), "used hints are dropped");
        assert_eq!(
            ledger.state().order.keys().collect::<Vec<_>>(),
            [&left[0].with_extension("")],
            "the new pack takes the newest source's place"
        );

        assert_whole(dir.path(), &all);
        assert_eq!(
            fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap(),
            Outcome::Nothing
        );
    }

    /// A pack git made (deltas that name their base by id) folds with the writer's,
    /// though it holds every object they hold: the new pack has each once. A kept
    /// pack is left alone, and a damaged one stops the fold with every pack still
    /// in place.
    #[test]
    fn git_packs_and_objects_in_two_packs_fold_and_kept_or_damaged_ones_are_left_alone() {
        let dir = bare_repository();
        let (all, ledger, _) = history(dir.path(), 12);
        let git_pack = git_pack(dir.path(), &["--all"], "--window=10").with_extension("pack");
        assert!(deltas(&verify(dir.path(), &git_pack), "blob") > 0);
        let outcome = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap();
        assert!(
            matches!(outcome, Outcome::Folded { packs: 14, objects, .. } if objects == all.len()),
            "{outcome:?}"
        );
        let left = packs(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        let listed = verify(dir.path(), &left[0]);
        let entries = listed
            .lines()
            .filter(|l| {
                [" commit ", " tree ", " blob "]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .count();
        assert_eq!(entries, all.len(), "each object once:\n{listed}");
        assert_whole(dir.path(), &all);

        // Three packs of one file each; the first not named by a branch yet.
        let mut more = Storage::default();
        let mut kept = None;
        let mut stems = Vec::new();
        for n in 0..3 {
            let data = format!("a file of its own, number {n}\n").into_bytes();
            let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, Kind::Blob, &data).unwrap();
            let mut batch = Storage::default();
            batch.insert(id, (Kind::Blob, data.clone()));
            let written = pack::write(
                &dir.path().join("objects"),
                &batch,
                gix::hash::Kind::Sha1,
                &|_| None,
            )
            .unwrap();
            let pack = packs(dir.path())
                .into_iter()
                .find(|p| !left.contains(p) && !stems.contains(p))
                .unwrap();
            stems.push(pack);
            if n == 0 {
                kept = Some(written);
            } else {
                written.release().unwrap();
            }
            more.insert(id, (Kind::Blob, data));
        }
        // One flipped byte inside an entry: the fold stops, nothing is removed and
        // no temporary file is left.
        let damaged = &stems[1];
        let mut bytes = std::fs::read(damaged).unwrap();
        bytes[14] ^= 0x40;
        std::fs::write(damaged, &bytes).unwrap();
        let error = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("fails its CRC32"), "{error}");
        assert!(error.to_string().contains("git fsck"), "{error}");
        let files = std::fs::read_dir(dir.path().join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            // `git verify-pack` above wrote a reverse index, a `.rev`.
            .filter(|f| !f.ends_with(".keep") && !f.ends_with(".rev"))
            .collect::<Vec<_>>();
        assert_eq!(files.len(), 8, "four packs and their indexes: {files:?}");
        assert!(files.iter().all(|f| f.starts_with("pack-")), "{files:?}");

        // Left out of later folds, which go on without it.
        assert_eq!(
            fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap(),
            Outcome::Nothing,
            "one released one-file pack left next to the large one"
        );
        // A flipped bit in an index (whose ids and offsets the fold would copy).
        let index = damaged.with_extension("idx");
        let mut index_bytes = std::fs::read(&index).unwrap();
        index_bytes[8 + 255 * 4 + 4] ^= 0x01;
        std::fs::write(&index, &index_bytes).unwrap();
        bytes[14] ^= 0x40;
        std::fs::write(damaged, &bytes).unwrap();
        let error = fold(dir.path(), gix::hash::Kind::Sha1, &Ledger::default()).unwrap_err();
        assert!(
            error.to_string().contains("does not match its checksum"),
            "{error}"
        );
        index_bytes[8 + 255 * 4 + 4] ^= 0x01;
        std::fs::write(&index, &index_bytes).unwrap();
        // Mended, as after a restart.
        let outcome = fold(dir.path(), gix::hash::Kind::Sha1, &Ledger::default()).unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::Folded {
                    packs: 2,
                    objects: 2,
                    ..
                }
            ),
            "the two released one-file packs: {outcome:?}"
        );
        let after = packs(dir.path());
        assert_eq!(after.len(), 3, "{after:?}");
        assert!(
            after.contains(&left[0]) && after.contains(&stems[0]),
            "{after:?}"
        );
        kept.unwrap().release().unwrap();
        assert_whole(dir.path(), &all);
        assert_reads_back(dir.path(), &more);
    }

    /// The lines of `git verify-pack -v` that are objects: (id, its base if a delta).
    fn listed(verify: &str) -> Vec<(String, Option<String>)> {
        verify
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 5 && f[0].len() == 40)
            .map(|f| (f[0].to_owned(), f.get(6).map(|b| (*b).to_owned())))
            .collect()
    }

    /// A pack git made with offset deltas, copied after packs that hold some of its
    /// objects: its deltas move (their distance to the base is written again), and
    /// a delta whose base was copied from another pack first points at that copy.
    #[test]
    fn offset_deltas_move_and_lean_on_the_first_copy_of_their_base() {
        let dir = bare_repository();
        let (all, ledger, tip) = history(dir.path(), 12);
        let writer_packs: Vec<PathBuf> = {
            let state = ledger.state();
            let mut order: Vec<(&PathBuf, &u64)> = state.order.iter().collect();
            order.sort_by_key(|(_, n)| **n);
            order
                .into_iter()
                .map(|(stem, _)| stem.with_extension("pack"))
                .collect()
        };
        // git's pack of what the last 6 commits added.
        let git_stem = git_pack(
            dir.path(),
            &[&tip.to_string(), &format!("^{tip}~6")],
            "--delta-base-offset",
        );
        ledger.written(git_stem.clone(), Vec::new());
        // The writer's packs of 3 of those commits go; those of the last 3 stay, and
        // are copied before git's (git makes older versions deltas of newer ones).
        let ids_of = |pack: &Path| -> std::collections::HashSet<String> {
            listed(&verify(dir.path(), pack))
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        let kept: std::collections::HashSet<String> = writer_packs[10..13]
            .iter()
            .flat_map(|p| ids_of(p))
            .collect();
        let gone: std::collections::HashSet<String> =
            writer_packs[7..10].iter().flat_map(|p| ids_of(p)).collect();
        for pack in &writer_packs[7..10] {
            std::fs::remove_file(pack.with_extension("idx")).unwrap();
            std::fs::remove_file(pack).unwrap();
        }
        let git_deltas: Vec<(String, String)> =
            listed(&verify(dir.path(), &git_stem.with_extension("pack")))
                .into_iter()
                .filter_map(|(id, base)| Some((id, base?)))
                .collect();
        let on_first_copy = git_deltas
            .iter()
            .filter(|(id, base)| gone.contains(id) && kept.contains(base) && !gone.contains(base))
            .count();
        let moved = git_deltas
            .iter()
            .filter(|(id, base)| gone.contains(id) && gone.contains(base))
            .count();
        assert!(
            on_first_copy > 0 && moved > 0,
            "the set-up must have both kinds of delta: {on_first_copy} on a first copy, {moved} moved\n{git_deltas:?}"
        );

        let outcome = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap();
        assert!(matches!(outcome, Outcome::Folded { .. }), "{outcome:?}");
        assert!(
            !git_stem.with_extension("pack").exists(),
            "git's pack was folded"
        );
        let mut folded: std::collections::HashMap<String, Option<String>> = Default::default();
        for pack in packs(dir.path()) {
            folded.extend(listed(&verify(dir.path(), &pack)));
        }
        assert_eq!(folded.len(), all.len(), "each object once");
        for (id, base) in git_deltas.iter().filter(|(id, _)| gone.contains(id)) {
            assert_eq!(
                folded[id].as_ref(),
                Some(base),
                "{id} stays a delta of {base}"
            );
        }
        assert_whole(dir.path(), &all);
    }

    /// A fold asked to stop at shutdown, or given a truncated pack, changes nothing
    /// on disk; the truncated pack is left out afterwards, and packs no longer on
    /// disk leave the ledger. A multi-pack-index is git's to handle.
    #[test]
    fn a_stopped_fold_or_a_truncated_pack_changes_nothing() {
        let dir = bare_repository();
        let (all, ledger, _) = history(dir.path(), 6);
        let files = || {
            let mut files: Vec<String> = std::fs::read_dir(dir.path().join("objects/pack"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            files
        };
        let before = files();
        let stopped = Ledger::default();
        stopped.stop();
        let error = fold(dir.path(), gix::hash::Kind::Sha1, &stopped).unwrap_err();
        assert!(error.to_string().contains("shutting down"), "{error}");
        assert_eq!(files(), before);

        let truncated = packs(dir.path()).pop().unwrap();
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let error = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
        assert_eq!(files(), before);
        std::fs::write(&truncated, b"").unwrap();
        let outcome = fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap();
        let Outcome::Folded { packs: folded, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(truncated.exists(), "the damaged pack is left as it is");
        assert_eq!(
            ledger.state().order.len(),
            7 - folded + 1,
            "the folded packs are gone from the ledger, the new one is in: {:?}",
            ledger.state().order
        );
        std::fs::write(&truncated, &bytes).unwrap();
        assert_whole(dir.path(), &all);

        std::fs::create_dir(dir.path().join("objects/pack/multi-pack-index.d")).unwrap();
        assert_eq!(
            fold(dir.path(), gix::hash::Kind::Sha1, &ledger).unwrap(),
            Outcome::NeedsGit("a multi-pack-index lists the packs")
        );
    }
}
