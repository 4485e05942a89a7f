//! A private key that others on the host can read is a leaked identity: warn about it.
//!
//! Only a warning: Kubernetes mounts secrets 0644 unless the pod sets `defaultMode`, and
//! refusing such a key would stop a sidecar that an operator can fix without downtime.

use std::path::Path;

/// Why `path` is readable by more than its owner, or `None` when it is not (or cannot be
/// read at all). Symlinks are followed: the target's mode counts.
#[cfg(unix)]
pub fn key_file_exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    let readers = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (false, false) => return None,
        (true, false) => "its group",
        (false, true) => "every user",
        (true, true) => "its group and every user",
    };
    Some(format!(
        "private key {} is readable by {readers} (mode {mode:04o}); make it 0600 or 0400",
        path.display()
    ))
}

/// Always `None`: this platform has no unix permissions to check.
#[cfg(not(unix))]
pub fn key_file_exposure(_path: &Path) -> Option<String> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn warns_when_group_or_other_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "secret").unwrap();
        let set =
            |mode| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        set(0o600);
        assert_eq!(key_file_exposure(&key), None);
        set(0o400);
        assert_eq!(key_file_exposure(&key), None);
        set(0o640);
        assert!(key_file_exposure(&key)
            .unwrap()
            .contains("its group (mode 0640)"));
        set(0o644);
        assert!(key_file_exposure(&key)
            .unwrap()
            .contains("its group and every user"));
        set(0o604);
        assert!(key_file_exposure(&key).unwrap().contains("every user"));
    }
}
