//! Blob storage is given back: a file a developer uploaded and no package ever named is
//! deleted once it has gone unreferenced for the grace period, counted on `/metrics`, while
//! the files of the app's package stay however old they are.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hydrant_testkit::wait_for;
use sha2::{Digest as _, Sha256};

use crate::support::{Cc, push_and_stage};

fn blob_path(data: &Path, sha256: &str) -> PathBuf {
    data.join("blobs").join(&sha256[..2]).join(sha256)
}

/// Sets every file under `dir` to have been written `age` ago.
fn age_all(dir: &Path, age: Duration) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            age_all(&path, age);
        } else {
            std::fs::File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
        }
    }
}

#[tokio::test]
async fn an_unreferenced_upload_is_collected_after_the_grace_period_and_counted() {
    let (dir, cc) = Cc::fresh("cc-blob-gc").await;
    let app_file: &[u8] = b"print('kept')\n";
    push_and_stage(&cc.admin, "kept", &[("app.py", app_file, 0o644)], None).await;
    let stray: &[u8] = b"uploaded, never packaged";
    let stray_sha = hydrant_api::push::hex(&Sha256::digest(stray));
    cc.admin
        .upload_blob_bytes(&stray_sha, stray.to_vec())
        .await
        .unwrap();
    let kept_sha = hydrant_api::push::hex(&Sha256::digest(app_file));
    let (stray_file, kept_file) = (
        blob_path(dir.path(), &stray_sha),
        blob_path(dir.path(), &kept_sha),
    );
    assert!(stray_file.exists() && kept_file.exists());

    // What is kept within the grace period is the unit test's (`blob_lifecycle`); here the
    // files are made two hours old, as if the developer had walked away.
    age_all(&dir.path().join("blobs"), Duration::from_secs(2 * 3600));
    wait_for(
        Duration::from_secs(10),
        "the stray blob to be collected",
        || {
            let gone = !stray_file.exists();
            async move { gone }
        },
    )
    .await;
    assert!(kept_file.exists(), "the package's file stays");
    let metrics = cc.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cloudcontroller_blobs_collected_total")
                && l.contains("kind=\"blob\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("cloudcontroller_blob_bytes_collected_total")
                && l.ends_with(&format!(" {}", stray.len()))
        ),
        "{metrics}"
    );
    cc.stop().await;
}
