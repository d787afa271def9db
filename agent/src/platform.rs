//! The device's platform: the one this agent was built for, `--platform`
//! parsing, and the check of an image config against it.

use crate::error::{Error, Result};
use layerlink_proto::msg::Platform;

/// The platform this agent was built for.
pub fn default_platform() -> Platform {
    let (arch, variant) = if cfg!(target_arch = "x86_64") {
        ("amd64", None)
    } else if cfg!(target_arch = "aarch64") {
        ("arm64", None)
    } else if cfg!(target_arch = "arm") {
        ("arm", Some("v7".to_string()))
    } else if cfg!(target_arch = "x86") {
        ("386", None)
    } else if cfg!(target_arch = "riscv64") {
        ("riscv64", None)
    } else {
        (std::env::consts::ARCH, None)
    };
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant,
    }
}

/// Parse `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Option<Platform> {
    let mut parts = s.split('/');
    let os = parts.next().filter(|p| !p.is_empty())?;
    let arch = parts.next().filter(|p| !p.is_empty())?;
    let variant = parts.next().map(str::to_string);
    if parts.next().is_some() || variant.as_deref() == Some("") {
        return None;
    }
    Some(Platform {
        os: os.into(),
        architecture: arch.into(),
        variant,
    })
}

/// Check an image config's `os`, `architecture` and `variant` against the
/// device's platform. A variant is compared only when both name one
/// (`arm64` without a variant is `v8`).
pub fn check_platform(config: &[u8], want: &Platform) -> Result<()> {
    let v = crate::json::parse(config)
        .map_err(|e| Error::integrity(format!("image config is not JSON: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let (os, arch) = (field("os"), field("architecture"));
    let variant = Some(field("variant"))
        .filter(|s| !s.is_empty())
        .or((arch == "arm64").then_some("v8"));
    let want_variant = want
        .variant
        .as_deref()
        .or((want.architecture == "arm64").then_some("v8"));
    let variant_ok = match (variant, want_variant) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if os == want.os && arch == want.architecture && variant_ok {
        return Ok(());
    }
    let show = |os: &str, arch: &str, var: Option<&str>| match var {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    Err(Error::WrongPlatform(format!(
        "the image is {}, this device is {} (--force-platform or `force_platform = true` to sync it anyway)",
        show(os, arch, Some(field("variant")).filter(|s| !s.is_empty())),
        show(&want.os, &want.architecture, want.variant.as_deref())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        parse_platform(s).unwrap()
    }

    #[test]
    fn config_platform_against_the_device() {
        let cfg = |os: &str, arch: &str, var: Option<&str>| {
            let v = var.map_or(String::new(), |v| format!(",\"variant\":\"{v}\""));
            format!("{{\"os\":\"{os}\",\"architecture\":\"{arch}\"{v}}}").into_bytes()
        };
        let ok = |c: &[u8], d: &str| check_platform(c, &p(d)).is_ok();
        assert!(ok(&cfg("linux", "amd64", None), "linux/amd64"));
        assert!(!ok(&cfg("linux", "amd64", None), "linux/arm64"));
        assert!(!ok(&cfg("windows", "amd64", None), "linux/amd64"));
        assert!(ok(&cfg("linux", "arm64", Some("v8")), "linux/arm64"));
        assert!(ok(&cfg("linux", "arm64", None), "linux/arm64/v8"));
        assert!(ok(&cfg("linux", "arm", Some("v7")), "linux/arm/v7"));
        assert!(!ok(&cfg("linux", "arm", Some("v6")), "linux/arm/v7"));
        // A config without a variant fits any variant of its architecture.
        assert!(ok(&cfg("linux", "arm", None), "linux/arm/v7"));
        assert!(!ok(b"{}", "linux/amd64"));
        let e = check_platform(&cfg("linux", "amd64", None), &p("linux/arm/v7")).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::NOT_FOUND);
        assert!(e.to_string().contains("linux/amd64") && e.to_string().contains("linux/arm/v7"));
    }

    #[test]
    fn platforms() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_deref()),
            ("arm64", Some("v8"))
        );
        assert!(parse_platform("linux").is_none());
    }
}
