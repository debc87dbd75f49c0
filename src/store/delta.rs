//! Deltas inside one batch's pack: each changed tree or file stored as a git delta of
//! its path's previous version.
//!
//! Every commit rewrites each directory on its files' paths, so a batch of N
//! commits holds N versions of the root tree, each differing from the one before by
//! an entry or two. Stored whole they were about half of every pack's bytes, all of
//! them compressed by the writer. Here each tree and file a commit changed is stored
//! as a git delta against the same path in its parent commit, when that version is
//! in the same pack (a pack on disk must hold its own bases). When it is in an
//! earlier pack, the pair is kept as a hint, and the fold that brings both packs
//! together makes the delta then ([`super::compact`]). `git fast-import` stores a
//! repository the same way: every version as a delta of the one before it.
//!
//! Which object is "the same path" comes from the objects alone: a commit's tree is
//! paired with its parent's, and a changed entry of the same kind on both sides is
//! paired the same way, down the path. The delta copies the bytes both versions
//! share at the start and at the end and inserts the rest, which for trees that
//! differ by a few entries, or a manifest with one field changed, is most of the
//! saving a full delta search finds.
//!
//! Invariants: a base is always written before its delta; a chain in the pack
//! written here is at most [`MAX_DEPTH`] deltas long (a fold can lengthen it); every
//! delta is applied to its base and compared with
//! the object before it is used, so a wrong one is never written (the object is
//! then stored whole).

use gix::hash::ObjectId;
use gix::objs::Kind;
use gix::odb::memory::Storage;

/// Longest chain of deltas: git's own default for `pack.depth` is 50, and a reader
/// applies each link, so a short chain keeps reading the tip's trees cheap.
pub(super) const MAX_DEPTH: u32 = 16;

/// How the objects of a pack are stored, in the order they are written: first the
/// whole ones, then each delta after its base.
pub(super) struct Plan {
    pub(super) whole: Vec<ObjectId>,
    /// (object, its base, the delta's bytes)
    pub(super) deltas: Vec<(ObjectId, ObjectId, Vec<u8>)>,
    pub(super) hints: Vec<Hint>,
}

/// (object stored whole, the previous version of its path), where that version is
/// in an earlier pack: a fold of both packs may store the one as a delta of the
/// other ([`super::compact`]).
pub(super) type Hint = (ObjectId, ObjectId);

/// Reads an object that is not in the pack, for [`Plan::hints`].
pub(super) type Outside<'a> = &'a dyn Fn(&ObjectId) -> Option<Vec<u8>>;

/// Decides which trees and files of `objects` are stored as deltas; with
/// `outside`, also which are worth a delta once their base is in the same pack.
pub(super) fn plan(objects: &Storage, hash: gix::hash::Kind, outside: Option<Outside>) -> Plan {
    let mut planner = Planner {
        objects,
        hash,
        outside,
        placed: Default::default(),
        deltas: Vec::new(),
        hints: Vec::new(),
    };
    for commit in commits_parents_first(objects, hash) {
        let Some(parent) = commit.parent else {
            continue;
        };
        let parent_tree = match objects.get(&parent) {
            Some((Kind::Commit, data)) => tree_of(data, hash),
            Some(_) => None,
            None => outside
                .and_then(|read| read(&parent))
                .and_then(|data| tree_of(&data, hash)),
        };
        if let Some(parent_tree) = parent_tree {
            planner.pair(commit.tree, parent_tree);
        }
    }
    let Planner { deltas, hints, .. } = planner;
    let in_delta: gix::hashtable::HashSet<ObjectId> = deltas.iter().map(|(id, _, _)| *id).collect();
    let whole = objects
        .keys()
        .filter(|id| !in_delta.contains(*id))
        .copied()
        .collect();
    Plan {
        whole,
        deltas,
        hints,
    }
}

struct Planner<'a> {
    objects: &'a Storage,
    hash: gix::hash::Kind,
    outside: Option<Outside<'a>>,
    /// Depth of each object placed so far as a delta or as a base (0: whole).
    placed: gix::hashtable::HashMap<ObjectId, u32>,
    deltas: Vec<(ObjectId, ObjectId, Vec<u8>)>,
    hints: Vec<Hint>,
}

impl Planner<'_> {
    /// Stores `new` as a delta of `old`, the same path's previous version, when both
    /// are in this pack, are of one kind and `new` is not placed yet; then does the
    /// same for the entries that differ, when they are trees.
    fn pair(&mut self, new: ObjectId, old: ObjectId) {
        if new == old || self.placed.contains_key(&new) {
            return;
        }
        let Some((kind, target)) = self.objects.get(&new) else {
            return;
        };
        let base = match self.objects.get(&old) {
            Some((base_kind, base)) if base_kind == kind => {
                let depth = *self.placed.entry(old).or_insert(0) + 1;
                match (depth <= MAX_DEPTH).then(|| encode(base, target)).flatten() {
                    Some(delta) if apply(base, &delta).as_deref() == Some(target.as_slice()) => {
                        self.placed.insert(new, depth);
                        self.deltas.push((new, old, delta));
                    }
                    _ => {
                        self.placed.insert(new, 0);
                    }
                }
                std::borrow::Cow::Borrowed(base.as_slice())
            }
            Some(_) => return,
            None => {
                let Some(read) = self.outside else {
                    return;
                };
                self.placed.insert(new, 0);
                self.hints.push((new, old));
                if *kind != Kind::Tree {
                    return;
                }
                match read(&old) {
                    Some(base) => std::borrow::Cow::Owned(base),
                    None => return,
                }
            }
        };
        if *kind != Kind::Tree {
            return;
        }
        // The same paths below, where they changed. A tree of S entries is indexed
        // once, not searched once per entry.
        let (Some(new_entries), Some(old_entries)) =
            (entries(target, self.hash), entries(&base, self.hash))
        else {
            return;
        };
        let before: std::collections::HashMap<&[u8], (Mode, ObjectId)> = old_entries
            .into_iter()
            .map(|(mode, name, id)| (name, (mode, id)))
            .collect();
        for (mode, name, id) in new_entries {
            match before.get(name) {
                Some((old_mode, old)) if *old != id && *old_mode == mode && mode != Mode::Other => {
                    self.pair(id, *old)
                }
                _ => {}
            }
        }
    }
}

/// A commit of the pack: its tree and its first parent.
struct Commit {
    tree: ObjectId,
    parent: Option<ObjectId>,
}

/// The pack's commits, each after its parent when that is in the pack too.
fn commits_parents_first(objects: &Storage, hash: gix::hash::Kind) -> Vec<Commit> {
    let commits: Vec<(ObjectId, Commit)> = objects
        .iter()
        .filter(|(_, (kind, _))| *kind == Kind::Commit)
        .filter_map(|(id, (_, data))| {
            let tree = tree_of(data, hash)?;
            let parent = header_ids(data, b"parent ", hash).next();
            Some((*id, Commit { tree, parent }))
        })
        .collect();
    // Parents first: from the commits whose parent is not in the pack, down each
    // commit's children. Linear in the number of commits.
    let ids: gix::hashtable::HashSet<ObjectId> = commits.iter().map(|(id, _)| *id).collect();
    let mut children: gix::hashtable::HashMap<ObjectId, Vec<usize>> = Default::default();
    let mut ready = Vec::new();
    for (i, (_, commit)) in commits.iter().enumerate() {
        match commit.parent.filter(|p| ids.contains(p)) {
            Some(parent) => children.entry(parent).or_default().push(i),
            None => ready.push(i),
        }
    }
    // Deterministic: the same objects always give the same pack.
    ready.sort_by_key(|i| std::cmp::Reverse(commits[*i].0));
    let mut order = Vec::with_capacity(commits.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        if let Some(mut next) = children.remove(&commits[i].0) {
            next.sort_by_key(|i| std::cmp::Reverse(commits[*i].0));
            ready.extend(next);
        }
    }
    // Commits in a cycle (impossible for real commits, whose ids hash their
    // parents) are left out: their trees are then stored whole.
    let mut slots: Vec<Option<Commit>> = commits.into_iter().map(|(_, c)| Some(c)).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn tree_of(commit: &[u8], hash: gix::hash::Kind) -> Option<ObjectId> {
    header_ids(commit, b"tree ", hash).next()
}

/// The ids of a commit's header lines that start with `key`.
fn header_ids<'a>(
    commit: &'a [u8],
    key: &'a [u8],
    hash: gix::hash::Kind,
) -> impl Iterator<Item = ObjectId> + 'a {
    commit
        .split(|b| *b == b'\n')
        .take_while(|line| !line.is_empty())
        .filter_map(move |line| line.strip_prefix(key))
        .filter(move |hex| hex.len() == hash.len_in_hex())
        .filter_map(|hex| ObjectId::from_hex(hex).ok())
}

/// What a tree entry names, as far as pairing versions goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tree,
    /// A file or a symbolic link.
    Blob,
    /// A submodule's commit.
    Other,
}

/// The entries of a tree: (what it names, name, id).
fn entries(tree: &[u8], hash: gix::hash::Kind) -> Option<Vec<(Mode, &[u8], ObjectId)>> {
    let mut out = Vec::new();
    let mut rest = tree;
    let id_len = hash.len_in_bytes();
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let mode = match &rest[..space] {
            b"40000" => Mode::Tree,
            b"100644" | b"100755" | b"120000" => Mode::Blob,
            _ => Mode::Other,
        };
        let nul = space + 1 + rest[space + 1..].iter().position(|b| *b == 0)?;
        let name = &rest[space + 1..nul];
        let id = rest.get(nul + 1..nul + 1 + id_len)?;
        out.push((mode, name, ObjectId::from_bytes_or_panic(id)));
        rest = &rest[nul + 1 + id_len..];
    }
    Some(out)
}

/// Longest copy one instruction holds here (git's own encoder splits at this too).
const MAX_COPY: usize = 0x10000;

/// A git delta that makes `target` from `base`: copy the bytes they share at the
/// start, insert the middle, copy the bytes they share at the end. `None` when
/// that saves less than half of `target`.
pub(super) fn encode(base: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let prefix = base.iter().zip(target).take_while(|(a, b)| a == b).count();
    let room = base.len().min(target.len()) - prefix;
    let suffix = base
        .iter()
        .rev()
        .zip(target.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let middle = &target[prefix..target.len() - suffix];
    let mut out = Vec::with_capacity(32 + middle.len() + middle.len() / 127);
    varint(&mut out, base.len());
    varint(&mut out, target.len());
    copy(&mut out, 0, prefix);
    for chunk in middle.chunks(127) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    copy(&mut out, base.len() - suffix, suffix);
    (out.len() < target.len() / 2).then_some(out)
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Copy instructions for `len` bytes of the base from `offset`.
fn copy(out: &mut Vec<u8>, mut offset: usize, mut len: usize) {
    while len > 0 {
        let size = len.min(MAX_COPY);
        let at = out.len();
        out.push(0x80);
        for i in 0..4 {
            let byte = (offset >> (8 * i)) as u8;
            if byte != 0 {
                out[at] |= 1 << i;
                out.push(byte);
            }
        }
        // A size of 0x10000 is written as no size bytes at all.
        if size != MAX_COPY {
            for i in 0..3 {
                let byte = (size >> (8 * i)) as u8;
                if byte != 0 {
                    out[at] |= 0x10 << i;
                    out.push(byte);
                }
            }
        }
        offset += size;
        len -= size;
    }
}

/// Applies a git delta to `base`; `None` if it is malformed or does not fit.
pub(super) fn apply(base: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    let mut rest = delta;
    let mut read_varint = || {
        let mut n = 0usize;
        for shift in (0..64).step_by(7) {
            let (byte, tail) = rest.split_first()?;
            rest = tail;
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    };
    let base_len = read_varint()?;
    let target_len = read_varint()?;
    if base_len != base.len() {
        return None;
    }
    let mut out = Vec::with_capacity(target_len);
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        if op & 0x80 != 0 {
            let mut field = |bits: u8, count: usize| {
                let mut n = 0usize;
                for i in 0..count {
                    if bits & (1 << i) != 0 {
                        let (byte, tail) = rest.split_first()?;
                        rest = tail;
                        n |= usize::from(*byte) << (8 * i);
                    }
                }
                Some(n)
            };
            let offset = field(op & 0x0f, 4)?;
            let size = match field((op >> 4) & 0x07, 3)? {
                0 => MAX_COPY,
                size => size,
            };
            out.extend_from_slice(base.get(offset..offset.checked_add(size)?)?);
        } else if op != 0 {
            let (literal, tail) = rest.split_at_checked(usize::from(op))?;
            out.extend_from_slice(literal);
            rest = tail;
        } else {
            return None;
        }
    }
    (out.len() == target_len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_make_the_target_from_the_base_and_copies_split_at_64_kib() {
        let base: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut target = base.clone();
        target.splice(
            70_000..70_010,
            b"changed entry, longer than before".iter().copied(),
        );
        let delta = encode(&base, &target).unwrap();
        assert!(delta.len() < 100, "{} bytes", delta.len());
        assert_eq!(apply(&base, &delta).unwrap(), target);
        // An entry added at the end, one taken from the start, and nothing changed.
        for target in [
            [base.as_slice(), b"new"].concat(),
            base[40..].to_vec(),
            base.clone(),
        ] {
            let delta = encode(&base, &target).unwrap();
            assert_eq!(apply(&base, &delta).unwrap(), target);
        }
        // Nothing shared: not worth a delta.
        assert!(encode(b"abcdefgh", b"12345678").is_none());
        // A delta for another base is refused, not misapplied.
        assert!(apply(&base[1..], &delta).is_none());
    }
}
