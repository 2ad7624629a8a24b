//! `deploy/dev`'s handling of secrets, on a fresh state folder: `deploy/dev env` masks every
//! secret (the generated ones, and the password inside each URL), and the files that hold
//! secrets or personal data are readable by their owner only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

#[test]
fn env_masks_every_secret_and_secret_files_are_private() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dev =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dev-env-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dev);
    let out = Command::new("bash")
        .arg(root.join("deploy/dev"))
        .arg("env")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .env("WEIR_DEV_DIR", &dev)
        .output()
        .unwrap();
    let printed = common::stdout_of(out);
    let secrets = std::fs::read_to_string(dev.join("secrets.env")).unwrap();
    let mut names = 0;
    for line in secrets.lines() {
        let (name, value) = line.split_once('=').unwrap();
        assert!(value.len() >= 16, "{name} is a real secret");
        assert!(
            !printed.contains(value),
            "{name}'s value is printed:\n{printed}"
        );
        assert!(
            printed.lines().any(|l| l == format!("{name}=****")),
            "{name} is not shown masked:\n{printed}"
        );
        names += 1;
    }
    assert!(
        names >= 5,
        "the PostgreSQL, admin and Airflow secrets:\n{secrets}"
    );
    let url = printed
        .lines()
        .find(|l| l.starts_with("WEIR_DATABASE_URL="))
        .expect("the database URL is listed");
    assert!(url.contains(":****@"), "{url}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dev.join("secrets.env")), 0o600);
    assert_eq!(
        mode(&dev.join("logs")),
        0o700,
        "logs can hold personal data"
    );
    std::fs::remove_dir_all(&dev).unwrap();
}
