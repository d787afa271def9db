//! Read-only passes over layers, for checks and warnings: what the merged
//! image holds at a few paths after a given layer ([`View`]), whether an
//! upper layer shadows an edited path ([`ShadowCheck`]), and which upper
//! whiteouts and hard links point at something an edit takes away
//! ([`Dangling`]). Layers are streamed; memory grows with the number of
//! paths tracked, never with the layer.

use super::stream::{LayerDigests, LayerReader};
use super::tar::{normalize_layer_path, Kind, TarReader};
use super::Warning;
use layerlink_proto::archive::{classify_whiteout, Whiteout};
use std::collections::{BTreeSet, HashMap, HashSet};

/// One entry of a layer as the scans see it.
#[derive(Debug)]
pub struct ScanEntry {
    /// Normalised path; `None` for the root entry.
    pub path: Option<Vec<u8>>,
    /// What it makes.
    pub kind: Kind,
    /// Whiteout meaning of the path.
    pub whiteout: Whiteout,
    /// Normalised hard-link target.
    pub link: Option<Vec<u8>>,
}

/// Stream every entry of a layer to `f`; the layer's digests once read.
/// Entries whose path cannot be normalised (`..`) are skipped.
pub fn scan_layer(
    layer: LayerReader,
    mut f: impl FnMut(&ScanEntry),
) -> anyhow::Result<LayerDigests> {
    let mut tar = TarReader::new(layer);
    while let Some(e) = tar.next_entry()? {
        if e.is_global() {
            continue;
        }
        let Ok(path) = normalize_layer_path(&e.path) else {
            continue;
        };
        let whiteout = path
            .as_deref()
            .map(classify_whiteout)
            .unwrap_or(Whiteout::None);
        let link = if e.typ == b'1' {
            normalize_layer_path(&e.link).ok().flatten()
        } else {
            None
        };
        f(&ScanEntry {
            path,
            kind: e.kind(),
            whiteout,
            link,
        });
    }
    Ok(tar.into_inner().finish()?)
}

/// Strict ancestors of a normalised path, shortest first (`a/b/c` → `a`, `a/b`).
pub fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &c)| c == b'/')
        .map(move |(i, _)| &path[..i])
}

/// The merged image's state at a set of tracked paths, layer by layer,
/// following OCI whiteout rules (a whiteout hides lower layers only; an
/// entry implies its parent directories).
#[derive(Debug, Default)]
pub struct View {
    tracked: BTreeSet<Vec<u8>>,
    state: HashMap<Vec<u8>, (Kind, usize)>,
    cur_present: HashMap<Vec<u8>, Kind>,
    cur_hidden: HashSet<Vec<u8>>,
    layer: usize,
}

impl View {
    /// Track these paths.
    pub fn new(tracked: impl IntoIterator<Item = Vec<u8>>) -> View {
        View {
            tracked: tracked.into_iter().collect(),
            ..View::default()
        }
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// Start applying layer `layer`.
    pub fn begin(&mut self, layer: usize) {
        self.layer = layer;
        self.cur_present.clear();
        self.cur_hidden.clear();
    }

    fn hide_under(&mut self, dir: &[u8]) {
        if dir.is_empty() {
            self.cur_hidden.extend(self.tracked.iter().cloned());
            return;
        }
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        let under: Vec<Vec<u8>> = self.tracked.range(lo..hi).cloned().collect();
        self.cur_hidden.extend(under);
    }

    /// Apply one entry of the current layer.
    pub fn entry(&mut self, path: &[u8], kind: Kind, whiteout: &Whiteout) {
        if self.tracked.is_empty() {
            return;
        }
        for a in ancestors(path) {
            if self.tracked.contains(a) {
                self.cur_present.entry(a.to_vec()).or_insert(Kind::Dir);
            }
        }
        match whiteout {
            Whiteout::Remove(q) => {
                if self.tracked.contains(q) {
                    self.cur_hidden.insert(q.clone());
                }
                self.hide_under(q);
            }
            Whiteout::Opaque(d) => self.hide_under(d),
            Whiteout::None => {
                if self.tracked.contains(path) {
                    self.cur_present.insert(path.to_vec(), kind);
                }
                if kind != Kind::Dir {
                    self.hide_under(path);
                }
            }
        }
    }

    /// Finish the current layer.
    pub fn end(&mut self) {
        for t in self.cur_hidden.drain() {
            if !self.cur_present.contains_key(&t) {
                self.state.remove(&t);
            }
        }
        for (t, k) in self.cur_present.drain() {
            self.state.insert(t, (k, self.layer));
        }
    }

    /// What a tracked path is after the finished layers, and which layer made it.
    pub fn get(&self, path: &[u8]) -> Option<(Kind, usize)> {
        self.state.get(path).copied()
    }

    /// What the current layer has at a tracked path.
    pub fn in_layer(&self, path: &[u8]) -> Option<Kind> {
        self.cur_present.get(path).copied()
    }
}

/// How an upper layer hides an edited path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowHow {
    /// An entry at the same path (or under it: the path became a directory).
    Overwritten,
    /// A `.wh.` whiteout of the path or of a parent.
    WhitedOut,
    /// An opaque whiteout of a parent directory.
    OpaqueParent,
    /// A parent is replaced by a non-directory.
    ParentReplaced,
}

impl ShadowHow {
    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ShadowHow::Overwritten => "overwrites it",
            ShadowHow::WhitedOut => "whites it out",
            ShadowHow::OpaqueParent => "has an opaque whiteout of a parent directory",
            ShadowHow::ParentReplaced => "replaces a parent directory with a non-directory",
        }
    }
}

/// Finds upper-layer entries that hide edited paths.
#[derive(Debug, Default)]
pub struct ShadowCheck {
    ops: Vec<(Vec<u8>, bool)>,
    exact: HashMap<Vec<u8>, Vec<usize>>,
    parents: HashMap<Vec<u8>, Vec<usize>>,
    seen: HashSet<(usize, usize)>,
    /// Warnings found so far.
    pub warnings: Vec<Warning>,
}

impl ShadowCheck {
    /// Check these paths (`true`: a put, `false`: a removal).
    pub fn new(ops: Vec<(Vec<u8>, bool)>) -> ShadowCheck {
        let mut c = ShadowCheck::default();
        for (i, (p, _)) in ops.iter().enumerate() {
            c.exact.entry(p.clone()).or_default().push(i);
            for a in ancestors(p) {
                c.parents.entry(a.to_vec()).or_default().push(i);
            }
        }
        c.ops = ops;
        c
    }

    fn hit(&mut self, op: usize, layer: usize, how: ShadowHow) {
        if self.seen.insert((op, layer)) {
            let (path, put) = &self.ops[op];
            self.warnings.push(Warning::Shadowed {
                path: show_path(path),
                layer,
                how,
                put: *put,
            });
        }
    }

    /// Look at one entry of upper layer `layer`.
    pub fn entry(&mut self, layer: usize, path: &[u8], kind: Kind, whiteout: &Whiteout) {
        let mut hits: Vec<(usize, ShadowHow)> = Vec::new();
        match whiteout {
            Whiteout::Remove(q) => {
                for set in [self.exact.get(q), self.parents.get(q)]
                    .into_iter()
                    .flatten()
                {
                    hits.extend(set.iter().map(|&i| (i, ShadowHow::WhitedOut)));
                }
            }
            Whiteout::Opaque(d) if d.is_empty() => {
                hits.extend((0..self.ops.len()).map(|i| (i, ShadowHow::OpaqueParent)))
            }
            Whiteout::Opaque(d) => {
                if let Some(set) = self.parents.get(d) {
                    hits.extend(set.iter().map(|&i| (i, ShadowHow::OpaqueParent)));
                }
            }
            Whiteout::None => {
                if let Some(set) = self.exact.get(path) {
                    hits.extend(set.iter().map(|&i| (i, ShadowHow::Overwritten)));
                }
                if kind != Kind::Dir {
                    if let Some(set) = self.parents.get(path) {
                        hits.extend(set.iter().map(|&i| (i, ShadowHow::ParentReplaced)));
                    }
                }
                for a in ancestors(path) {
                    if let Some(set) = self.exact.get(a) {
                        hits.extend(
                            set.iter()
                                .filter(|&&i| self.ops[i].1)
                                .map(|&i| (i, ShadowHow::Overwritten)),
                        );
                    }
                }
            }
        }
        for (i, how) in hits {
            // An upper whiteout agrees with a removal: not worth a warning
            // (a dangling whiteout is reported separately).
            let agrees =
                !self.ops[i].1 && matches!(how, ShadowHow::WhitedOut | ShadowHow::OpaqueParent);
            if !agrees {
                self.hit(i, layer, how);
            }
        }
    }
}

/// What an upper-layer entry points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer {
    /// A `.wh.` whiteout at `entry` removing the candidate path.
    Whiteout {
        /// The whiteout file's path.
        entry: Vec<u8>,
    },
    /// A hard link at `entry` to the candidate path.
    HardLink {
        /// The link's path.
        entry: Vec<u8>,
    },
}

/// Upper-layer whiteouts and hard links that may point at what an edit
/// removes, checked against the image before and after the edit.
#[derive(Debug, Default)]
pub struct Dangling {
    /// (layer, path pointed at, pointer).
    pub candidates: Vec<(usize, Vec<u8>, Pointer)>,
}

impl Dangling {
    /// Note an entry of a layer above the lowest edited one.
    pub fn collect(&mut self, layer: usize, e: &ScanEntry) {
        let Some(path) = &e.path else { return };
        if let Whiteout::Remove(q) = &e.whiteout {
            self.candidates.push((
                layer,
                q.clone(),
                Pointer::Whiteout {
                    entry: path.clone(),
                },
            ));
        } else if let Some(t) = &e.link {
            self.candidates.push((
                layer,
                t.clone(),
                Pointer::HardLink {
                    entry: path.clone(),
                },
            ));
        }
    }

    /// The highest layer with a candidate.
    pub fn top_layer(&self) -> Option<usize> {
        self.candidates.iter().map(|c| c.0).max()
    }

    /// Paths to track in [`View`]s.
    pub fn tracked(&self) -> Vec<Vec<u8>> {
        self.candidates.iter().map(|c| c.1.clone()).collect()
    }

    /// Judge the candidates of `layer`, while both views are inside it
    /// (their `get` is the state below it): warn where the old image had
    /// the path and the new one has not.
    pub fn judge(&self, layer: usize, old: &View, new: &View, out: &mut Vec<Warning>) {
        for (l, target, ptr) in &self.candidates {
            if *l != layer {
                continue;
            }
            match ptr {
                Pointer::Whiteout { entry } => {
                    if old.get(target).is_some() && new.get(target).is_none() {
                        out.push(Warning::DanglingWhiteout {
                            path: show_path(entry),
                            layer,
                        });
                    }
                }
                Pointer::HardLink { entry } => {
                    let had = old.in_layer(target).is_some() || old.get(target).is_some();
                    let has = new.in_layer(target).is_some() || new.get(target).is_some();
                    if had && !has {
                        out.push(Warning::DanglingHardLink {
                            path: show_path(entry),
                            target: show_path(target),
                            layer,
                        });
                    }
                }
            }
        }
    }
}

/// A normalised path as users write it: `/etc/motd`.
pub fn show_path(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(v: &mut View, layer: usize, entries: &[(&str, Kind)]) {
        v.begin(layer);
        for (p, k) in entries {
            let wh = classify_whiteout(p.as_bytes());
            v.entry(p.as_bytes(), *k, &wh);
        }
        v.end();
    }

    #[test]
    fn view_follows_whiteouts_and_implicit_parents() {
        let mut v = View::new(
            [
                "etc".into(),
                "etc/motd".into(),
                "opt/x".into(),
                "var".into(),
            ]
            .map(|s: String| s.into_bytes()),
        );
        feed(
            &mut v,
            0,
            &[
                ("etc/motd", Kind::File),
                ("opt/x", Kind::File),
                ("var", Kind::Dir),
            ],
        );
        assert_eq!(v.get(b"etc"), Some((Kind::Dir, 0)), "implied by etc/motd");
        assert_eq!(v.get(b"etc/motd"), Some((Kind::File, 0)));
        feed(
            &mut v,
            1,
            &[
                ("etc/.wh.motd", Kind::File),
                ("opt/.wh..wh..opq", Kind::File),
            ],
        );
        assert_eq!(v.get(b"etc/motd"), None);
        assert_eq!(v.get(b"opt/x"), None);
        assert_eq!(v.get(b"etc"), Some((Kind::Dir, 1)));
        feed(
            &mut v,
            2,
            &[(".wh.var", Kind::File), ("etc/motd", Kind::Symlink)],
        );
        assert_eq!(v.get(b"var"), None);
        assert_eq!(v.get(b"etc/motd"), Some((Kind::Symlink, 2)));
        feed(&mut v, 3, &[("etc", Kind::File)]);
        assert_eq!(v.get(b"etc"), Some((Kind::File, 3)));
        assert_eq!(
            v.get(b"etc/motd"),
            None,
            "hidden by a file replacing its parent"
        );
    }

    #[test]
    fn shadow_check_finds_each_way() {
        let mut c = ShadowCheck::new(vec![
            (b"etc/motd".to_vec(), true),
            (b"opt/app".to_vec(), false),
        ]);
        let e = |c: &mut ShadowCheck, l, p: &str, k| {
            c.entry(l, p.as_bytes(), k, &classify_whiteout(p.as_bytes()))
        };
        e(&mut c, 3, "etc/issue", Kind::File);
        assert!(c.warnings.is_empty());
        e(&mut c, 3, "etc/motd", Kind::File);
        e(&mut c, 4, "etc/.wh.motd", Kind::File);
        e(&mut c, 5, ".wh..wh..opq", Kind::File);
        e(&mut c, 6, "etc", Kind::Symlink);
        e(&mut c, 7, "etc/motd/inner", Kind::File);
        e(&mut c, 7, "opt/app/inner", Kind::File);
        let hows: Vec<(usize, ShadowHow)> = c
            .warnings
            .iter()
            .map(|w| match w {
                Warning::Shadowed { layer, how, .. } => (*layer, *how),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            hows,
            vec![
                (3, ShadowHow::Overwritten),
                (4, ShadowHow::WhitedOut),
                (5, ShadowHow::OpaqueParent), // the put only: a whiteout agrees with a removal
                (6, ShadowHow::ParentReplaced),
                (7, ShadowHow::Overwritten),
            ]
        );
    }
}
