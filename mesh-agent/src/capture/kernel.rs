//! The oldest kernel nodemesh runs on, checked before anything is loaded so
//! the refusal names the feature instead of a verifier error.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) is too old for nodemesh: it needs Linux {MIN_MAJOR}.{MIN_MINOR} or \
     newer, for sk_lookup's ingress_ifindex (5.17; inbound capture) and bpf_get_netns_cookie in \
     sockops (5.15; outbound capture)"
)]
pub struct TooOld {
    pub release: String,
}

const MIN_MAJOR: u32 = 5;
const MIN_MINOR: u32 = 17;

/// The oldest release, as `5.17`.
pub fn min_release() -> String {
    format!("{MIN_MAJOR}.{MIN_MINOR}")
}

/// Checks a kernel release string such as `6.18.44-fc-v782`.
pub fn check_release(release: &str) -> Result<(), TooOld> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (MIN_MAJOR, MIN_MINOR) {
        Ok(())
    } else {
        Err(TooOld {
            release: release.to_owned(),
        })
    }
}

/// Checks the running kernel.
pub fn check() -> Result<(), TooOld> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    check_release(&release)
}

#[cfg(test)]
mod tests {
    use super::check_release;

    #[test]
    fn releases_at_or_above_5_17_pass() {
        for ok in [
            "5.17.0",
            "5.19.1-generic",
            "6.1.0-18-amd64",
            "6.18.44-fc-v782",
            "10.0",
        ] {
            assert!(check_release(ok).is_ok(), "{ok}");
        }
        for old in ["5.16.20", "5.4.0-150-generic", "4.19.0", "garbage"] {
            let err = check_release(old).unwrap_err().to_string();
            assert!(err.contains("5.17") && err.contains(old), "{err}");
        }
    }
}
