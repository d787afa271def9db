//! Parsing `/v2/…` paths. Repository names may contain slashes, so the
//! path is matched from its end: `…/blobs/uploads/<id>`, `…/blobs/<digest>`,
//! `…/manifests/<reference>`, `…/tags/list`. Pure: no I/O.

/// What a `/v2/` path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags {
        /// Repository.
        name: &'a str,
    },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        /// Repository.
        name: &'a str,
        /// Tag or digest.
        reference: &'a str,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        /// Repository.
        name: &'a str,
        /// Digest text (checked by the handler).
        digest: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>` (OCI 1.1)
    Referrers {
        /// Repository.
        name: &'a str,
        /// Subject digest text (checked by the handler).
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart {
        /// Repository.
        name: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        /// Repository.
        name: &'a str,
        /// Session id.
        id: &'a str,
    },
}

impl<'a> Route<'a> {
    /// The repository the route names, if any.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Referrers { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. } => Some(name),
        }
    }
}

/// Parse the part of the path after `/v2/`. `None` if it names nothing.
pub fn parse(rest: &str) -> Option<Route<'_>> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return nonempty(name).map(|name| Route::Tags { name });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return nonempty(name).map(|name| Route::UploadStart { name });
    }
    let (head, last) = rest.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return nonempty(name).map(|name| Route::Upload { name, id: last });
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        return nonempty(name).map(|name| Route::Blob { name, digest: last });
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        return nonempty(name).map(|name| Route::Referrers { name, digest: last });
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        return nonempty(name).map(|name| Route::Manifest {
            name,
            reference: last,
        });
    }
    None
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Whether `name` is a valid repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most 255 characters.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-+", then an alphanumeric
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tag` is a valid tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_slashed_names() {
        assert_eq!(
            parse("a/b/c/tags/list"),
            Some(Route::Tags { name: "a/b/c" })
        );
        assert_eq!(
            parse("a/b/manifests/v1"),
            Some(Route::Manifest {
                name: "a/b",
                reference: "v1"
            })
        );
        assert_eq!(
            parse("x/blobs/sha256:00"),
            Some(Route::Blob {
                name: "x",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse("x/y/blobs/uploads/"),
            Some(Route::UploadStart { name: "x/y" })
        );
        assert_eq!(
            parse("x/y/blobs/uploads"),
            Some(Route::UploadStart { name: "x/y" })
        );
        assert_eq!(
            parse("x/blobs/uploads/abc"),
            Some(Route::Upload {
                name: "x",
                id: "abc"
            })
        );
        // "blobs" and "manifests" are fine as name components
        assert_eq!(
            parse("blobs/manifests/manifests/latest"),
            Some(Route::Manifest {
                name: "blobs/manifests",
                reference: "latest"
            })
        );
        assert_eq!(parse("_catalog"), Some(Route::Catalog));
        assert_eq!(parse("x/other/thing"), None);
        assert_eq!(parse("manifests/v1"), None);
        assert_eq!(parse("x/manifests/"), None);
    }

    #[test]
    fn names_and_tags() {
        for ok in [
            "a", "a/b/c", "my-app", "my--app", "a.b", "a_b", "a__b", "0x/1",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a___b", "a._b", "a b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.0_rc-1"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("a:b"));
        assert!(!valid_tag(&"x".repeat(129)));
    }
}
