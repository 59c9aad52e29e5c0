//! The cluster stores: records in a real PostgreSQL and blobs in a real
//! S3-compatible server (tests/common/cluster.rs starts both), through the
//! store backends themselves and through `lstmd serve --records --blobs`
//! run as a real process: a new pod with an empty data dir finds everything
//! the last one left, a job killed mid-run resumes there from its
//! checkpoint in object storage and ends with the weights of an
//! uninterrupted run, and a second replica on the same database is refused.
mod common;

use std::io::{Seek, Write};
use std::time::Duration;

use common::cluster::{cluster, psql};
use common::*;
use lstmd::proto as pb;
use lstmd::store::object::ObjectBlobs;
use lstmd::store::postgres::PgRecords;
use lstmd::store::{BlobStore, RecordStore, RecordWrite};

fn blobs_at(url: &str, scratch: &std::path::Path) -> ObjectBlobs {
    ObjectBlobs::open(url, scratch, &cluster().blob_options()).expect("the bucket answers")
}

#[test]
fn records_in_postgresql_behave_as_the_embedded_ones() {
    let records = PgRecords::open(&cluster().database(), None).unwrap();
    let w = |id: &'static str, json: Option<&'static [u8]>| RecordWrite {
        table: "models",
        id,
        json,
    };
    records
        .write_records(
            &[
                w("a_1", Some(b"1")),
                w("a%2", Some(b"2")),
                w("ab", Some(b"3")),
            ],
            true,
        )
        .unwrap();
    records.put_record("other", "a_1", b"x").unwrap();
    assert_eq!(
        records.get_record("models", "a_1").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(records.get_record("models", "zz").unwrap(), None);
    // A prefix matches literally (LIKE's `_` and `%` are not wildcards),
    // in id order, within its table.
    let ids = |prefix: &str| -> Vec<String> {
        let rows = records.list_records("models", prefix).unwrap();
        rows.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids("a"), ["a%2", "a_1", "ab"]);
    assert_eq!(ids("a_"), ["a_1"]);
    assert_eq!(ids("a%"), ["a%2"]);
    // A batch is one transaction: an update and a delete land together,
    // non-durable writes too.
    records
        .write_records(&[w("a_1", Some(b"10")), w("ab", None)], false)
        .unwrap();
    assert_eq!(ids(""), ["a%2", "a_1"]);
    assert_eq!(
        records.get_record("models", "a_1").unwrap().as_deref(),
        Some(&b"10"[..])
    );
    records.delete_record("models", "a%2").unwrap();
    assert_eq!(ids(""), ["a_1"]);
    assert_eq!(records.list_records("other", "").unwrap().len(), 1);
}

#[test]
fn blobs_in_object_storage_behave_as_local_files() {
    let scratch = tempfile::tempdir().unwrap();
    let url = cluster().blobs();
    let blobs = blobs_at(&url, scratch.path());
    blobs.put_blob("models/m/1/metadata.json", b"{}").unwrap();
    blobs
        .put_blob("models/m/2/metadata.json", b"{\"v\":2}")
        .unwrap();
    blobs.put_blob("models/mm/1/metadata.json", b"{}").unwrap();
    assert_eq!(
        blobs.get_blob("models/m/2/metadata.json").unwrap().unwrap(),
        b"{\"v\":2}"
    );
    assert_eq!(blobs.get_blob("models/m/3/metadata.json").unwrap(), None);
    assert_eq!(
        blobs.blob_size("models/m/2/metadata.json").unwrap(),
        Some(7)
    );
    let mut under_m = blobs.list_blobs("models/m").unwrap();
    under_m.sort();
    assert_eq!(
        under_m,
        ["models/m/1/metadata.json", "models/m/2/metadata.json"]
    );

    // A staged file larger than a part goes up in parts (multipart upload)
    // and comes back byte for byte through a local file.
    let mut staged = blobs.staging_file().unwrap();
    let big: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    staged.write_all(&big).unwrap();
    staged.as_file_mut().rewind().unwrap();
    blobs
        .put_blob_file("datasets/ds-1/tokens.u32", staged)
        .unwrap();
    assert_eq!(
        blobs.blob_size("datasets/ds-1/tokens.u32").unwrap(),
        Some(big.len() as u64)
    );
    let mut file = blobs
        .open_blob("datasets/ds-1/tokens.u32")
        .unwrap()
        .unwrap();
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut back).unwrap();
    assert!(back == big, "the blob read back differs");
    assert_eq!(
        blobs
            .open_blob("datasets/ds-2/tokens.u32")
            .unwrap()
            .map(|_| ()),
        None
    );
    // Nothing staged stays behind locally.
    drop(file);
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "scratch files left: {left:?}");

    // Deleting a folder takes every blob under it, not its neighbours'.
    blobs.delete_blobs("models/m").unwrap();
    assert_eq!(
        blobs.list_blobs("models").unwrap(),
        ["models/mm/1/metadata.json"]
    );
    // Keys are checked as the local store checks them.
    assert!(blobs.put_blob("../escape", b"x").is_err());
    // A second client on the same URL sees the same objects.
    let again = blobs_at(&url, scratch.path());
    assert_eq!(
        again.list_blobs("datasets").unwrap(),
        ["datasets/ds-1/tokens.u32"]
    );
}

#[test]
fn replicas_starting_together_apply_each_migration_once() {
    let url = cluster().database();
    let applied: Vec<Vec<i32>> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgRecords::connect(&url, None).unwrap().1))
            .collect();
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ran: Vec<i32> = applied.concat();
    assert_eq!(ran, [1], "each migration runs once: {applied:?}");
    let rows = psql(
        cluster().pg_port,
        url.rsplit('/').next().unwrap(),
        "SELECT version FROM lstmd_migrations",
    );
    assert_eq!(rows.unwrap(), "1");
    // `lstmd migrate` on a migrated database has nothing to do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
        .args(["migrate", "--records", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

/// `serve` on the test cluster's database `records` and prefix `blobs`.
fn replica(data_dir: &std::path::Path, records: &str, blobs: &str) -> Binary {
    replica_at(data_dir, records, blobs, &cluster().s3_endpoint)
}

/// `replica`, with its blobs on the S3 server at `endpoint`.
fn replica_at(data_dir: &std::path::Path, records: &str, blobs: &str, endpoint: &str) -> Binary {
    let flags = common::cluster::serve_flags_at(records, blobs, endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Binary::start_env(data_dir, &flags, &cluster().env())
}

async fn predict_probabilities(c: &mut Clients, model: &str) -> Vec<f64> {
    let answer = c
        .predict
        .predict(pb::PredictRequest {
            model: model.into(),
            sequences: vec![pb::Sequence {
                ids: vec![0, 1, 2, 3, 4, 5],
                text: String::new(),
            }],
            top_k: Some(3),
            ..Default::default()
        })
        .await
        .expect("Predict answers")
        .into_inner();
    answer.predictions[0]
        .top
        .iter()
        .map(|t| t.probability)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_finds_everything_and_a_second_replica_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (records, blobs) = (cluster().database(), cluster().blobs());
    let mut first = replica(&dir.path().join("pod-1"), &records, &blobs);
    let mut c = first.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 600), 7).await;
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "kept", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        finished(&watch_all(&mut c, &job.id).await).state,
        pb::JobState::Succeeded as i32
    );
    let before = predict_probabilities(&mut c, "kept").await;

    // Jobs are coordinated in one process for now: a second replica on the
    // same database stops at start and says why.
    let second_dir = dir.path().join("pod-2");
    let mut second = replica(&second_dir, &records, &blobs);
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(second_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("another lstmd replica runs on this database"),
        "{log}"
    );

    first.child.kill().unwrap(); // SIGKILL: the pod is gone, its disk too
    first.child.wait().unwrap();
    drop(first);
    let third = replica(&dir.path().join("pod-3"), &records, &blobs);
    let mut c = third.connect().await;
    assert_eq!(predict_probabilities(&mut c, "kept").await, before);
    assert_eq!(dataset_ids(&mut c).await, [ds.id]);
    let got = c
        .jobs
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::JobState::Succeeded as i32);
}

/// The weights a job registered, as stored.
fn weights(blobs: &dyn BlobStore, model: &str) -> Vec<u8> {
    blobs
        .get_blob(&format!("models/{model}/1/model.safetensors"))
        .unwrap()
        .expect("the model's weights are stored")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_run_resumes_on_a_new_pod_from_object_storage() {
    let dir = tempfile::tempdir().unwrap();
    let epochs = 6;
    // The same job, uninterrupted, on the embedded store.
    let local = start(&dir.path().join("local")).await;
    let mut c = connect(&local).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "survivor", epochs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        finished(&watch_all(&mut c, &job.id).await).state,
        pb::JobState::Succeeded as i32
    );
    local.stop().await.unwrap();
    let local_store = lstmd::store::LocalStore::open(&dir.path().join("local")).unwrap();
    let uninterrupted = weights(&local_store, "survivor");

    let (records, blobs) = (cluster().database(), cluster().blobs());
    let mut pod = replica(&dir.path().join("pod-1"), &records, &blobs);
    let mut c = pod.connect().await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 3000), 7).await;
    let (job, mut stream) = submit_watched(&mut c, long_job(&ds.id, "survivor", epochs)).await;
    wait_for_epoch(&mut stream, 2).await;
    pod.child.kill().unwrap(); // SIGKILL mid-run
    pod.child.wait().unwrap();
    drop(pod);

    let pod = replica(&dir.path().join("pod-2"), &records, &blobs);
    let mut c = pod.connect().await;
    let events = tokio::time::timeout(Duration::from_secs(300), watch_all(&mut c, &job.id))
        .await
        .expect("the resumed job ends");
    let done = finished(&events);
    assert_eq!(
        done.state,
        pb::JobState::Succeeded as i32,
        "{}",
        done.reason
    );
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            Some(pb::job_event::Kind::State(s)) if s.message.contains("resumed") && s.message.contains("checkpoint"))),
        "the job resumed from a checkpoint"
    );
    let scratch = tempfile::tempdir().unwrap();
    let resumed = weights(&blobs_at(&blobs, scratch.path()), "survivor");
    assert!(
        resumed == uninterrupted,
        "resumed weights differ from an uninterrupted run's"
    );
}

/// `lstmd migrate` with the test cluster's S3 settings and `extra` flags.
fn migrate(records: &str, blobs: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lstmd"))
        .arg("migrate")
        .args(cluster().serve_flags(records, blobs))
        .args(extra)
        .envs(cluster().env())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_dir_moves_to_the_cluster_stores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("single");
    let server = start(&data).await;
    let mut c = connect(&server).await;
    let ds = ids_dataset(&mut c, "cycle", cycle(7, 600), 7).await;
    let job = c
        .jobs
        .create_training_job(long_job(&ds.id, "moved", 1))
        .await
        .unwrap()
        .into_inner();
    let events = watch_all(&mut c, &job.id).await;
    assert_eq!(finished(&events).state, pb::JobState::Succeeded as i32);
    let before = predict_probabilities(&mut c, "moved").await;
    server.stop().await.unwrap();

    let (records, blobs) = (cluster().database(), cluster().blobs());
    let out = migrate(
        &records,
        &blobs,
        &["--from-data-dir", data.to_str().unwrap()],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("applied migrations [1]") && said.contains("copied"),
        "{said}"
    );
    // A second copy would merge two registries: refused, nothing written.
    let again = migrate(
        &records,
        &blobs,
        &["--from-data-dir", data.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds records"));

    let pod = replica(&dir.path().join("pod"), &records, &blobs);
    let mut c = pod.connect().await;
    assert_eq!(predict_probabilities(&mut c, "moved").await, before);
    assert_eq!(
        watch_all(&mut c, &job.id).await,
        events,
        "the job's events, as they were"
    );
    assert_eq!(dataset_ids(&mut c).await, std::slice::from_ref(&ds.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_down_answers_unavailable_then_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::cluster::free_port();
    let s3 = common::cluster::s3rver(dir.path(), port, false);
    let endpoint = format!("http://127.0.0.1:{port}");
    let records = cluster().database();
    let pod = replica_at(
        &dir.path().join("pod"),
        &records,
        "s3://lstmd/down",
        &endpoint,
    );
    let mut c = pod.connect().await;
    let kept = ids_dataset(&mut c, "kept", cycle(7, 600), 7).await;

    s3.stop();
    let refused = c
        .datasets
        .create_dataset(pb::CreateDatasetRequest {
            name: "lost".into(),
            data: Some(pb::create_dataset_request::Data::Ids(pb::TokenIds {
                ids: cycle(7, 600),
                vocab_size: 7,
            })),
            ..Default::default()
        })
        .await
        .expect_err("no bucket, no dataset");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("object storage"),
        "{}",
        refused.message()
    );
    // Records still answer, and nothing half-made was recorded.
    assert_eq!(dataset_ids(&mut c).await, std::slice::from_ref(&kept.id));

    let _s3 = common::cluster::s3rver(dir.path(), port, false);
    let job = c
        .jobs
        .create_training_job(long_job(&kept.id, "after", 1))
        .await
        .unwrap()
        .into_inner();
    let done = watch_all(&mut c, &job.id).await;
    assert_eq!(
        finished(&done).state,
        pb::JobState::Succeeded as i32,
        "{}",
        finished(&done).reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_database_stops_and_a_restart_finds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::cluster::free_port();
    let pg = common::cluster::postgres(dir.path(), port, false);
    let records = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let blobs = cluster().blobs();
    let pod_dir = dir.path().join("pod");
    let mut pod = replica(&pod_dir, &records, &blobs);
    let mut c = pod.connect().await;
    let kept = ids_dataset(&mut c, "kept", cycle(7, 600), 7).await;

    // Jobs must never run twice: without the database this replica could
    // no longer tell, so it stops (a supervisor starts it again).
    pg.stop();
    let stopped = tokio::task::spawn_blocking(move || pod.child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(60), stopped)
        .await
        .expect("the replica stops within a minute")
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let log = std::fs::read_to_string(pod_dir.with_extension("log")).unwrap();
    assert!(log.contains("lost the database connection"), "{log}");

    let _pg = common::cluster::postgres(dir.path(), port, false);
    let pod = replica(&dir.path().join("pod-2"), &records, &blobs);
    let mut c = pod.connect().await;
    assert_eq!(dataset_ids(&mut c).await, [kept.id]);
}

#[test]
fn records_over_tls_verify_the_database_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::make_pki(dir.path());
    let cert = std::fs::read_to_string(&pki.server_cert).unwrap();
    let key = std::fs::read_to_string(&pki.server_key).unwrap();
    let port = common::cluster::free_port();
    let _pg = common::cluster::postgres_tls_only(dir.path(), port, &cert, &key);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    // This server refuses connections without TLS, so a working store
    // talks TLS, to a certificate its CA file vouches for.
    let records = PgRecords::open(&url, Some(&pki.ca_file)).expect("TLS with the CA file");
    records.put_record("t", "a", b"1").unwrap();
    assert_eq!(
        records.get_record("t", "a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let Err(unknown) = PgRecords::open(&url, None) else {
        panic!("a certificate no root vouches for is accepted");
    };
    assert!(
        unknown.to_string().to_lowercase().contains("certificate"),
        "{unknown}"
    );
    // And a database without TLS is refused when the URL requires it.
    let plain = format!("{}?sslmode=require", cluster().database());
    assert!(PgRecords::open(&plain, None).is_err());
}

#[test]
fn records_and_blobs_go_together_and_name_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let open = |records: Option<&str>, blobs: Option<&str>| {
        let urls = lstmd::store::StoreUrls {
            data_dir: dir.path().to_path_buf(),
            records: records.map(str::to_string),
            records_ca_file: None,
            blobs: blobs.map(str::to_string),
            blob_options: Vec::new(),
        };
        match lstmd::store::backends::open(&urls) {
            Ok(_) => panic!("{records:?} with {blobs:?} opened"),
            Err(e) => e.to_string(),
        }
    };
    assert!(open(Some("postgres://x@127.0.0.1:1/db"), None).contains("go together"));
    assert!(open(None, Some("s3://bucket/p")).contains("go together"));
    assert!(open(Some("mysql://x@h/db"), Some("s3://bucket/p")).contains("expected postgres://"));
    let not_s3 = ObjectBlobs::open("gs://bucket/p", dir.path(), &[])
        .err()
        .unwrap();
    assert!(
        not_s3.to_string().contains("expected s3://bucket/prefix"),
        "{not_s3}"
    );
}
