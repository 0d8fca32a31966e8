//! Models by name, end to end against a stand-in for the Hugging Face hub on 127.0.0.1: the
//! file endpoints `hf-hub` uses (`/api/models/{repo}/revision/{rev}` for the commit and file
//! list, `/{repo}/resolve/{rev}/{file}` with `Range`, `ETag` / `X-Linked-Etag`,
//! `X-Repo-Commit` and `Content-Range`) serving the tiny fixtures. Checks that only the files a
//! model needs land in the standard cache layout, that later runs work with the server stopped
//! or `HF_HUB_OFFLINE=1`, that partial and broken downloads resume, and that a missing, gated or
//! unreachable model gives a one-line error.

mod hub_support;
use hub_support::*;

use std::path::Path;

use distill_corpus::record::records_from_batch;
use distill_corpus::shards::ShardReader;

#[test]
fn a_folder_model_lands_in_the_hf_cache_and_works_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let mut server = Server::start(vec![("tiny/qwen2-sharded", sharded_repo())]);
    let sha = "a".repeat(40);
    let repo_dir = home.join("hub/models--tiny--qwen2-sharded");
    let snapshot = repo_dir.join("snapshots").join(&sha);

    let args = ["inspect", "tiny/qwen2-sharded", "--json"];
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    let report = inspect_json(&stdout);
    assert_eq!(report["path"], snapshot.display().to_string());
    assert_eq!(report["hub"], format!("tiny/qwen2-sharded@{sha}"));
    assert!(
        stderr.contains(&format!(
            "Downloading `tiny/qwen2-sharded` from {} into `{}`",
            server.endpoint,
            home.join("hub").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Downloaded 6 files of `tiny/qwen2-sharded`"),
        "{stderr}"
    );
    // The same model as the fixture folder it was served from.
    let local = fixture("tiny-qwen2-sharded");
    let (local_stdout, _) = succeed(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", local.to_str().unwrap(), "--json"],
    ));
    let local_report = inspect_json(&local_stdout);
    assert_eq!(local_report.get("hub"), None);
    for key in [
        "parameters",
        "bytes_on_disk",
        "layers",
        "tensor_types",
        "vocab_size",
    ] {
        assert_eq!(report[key], local_report[key], "{key}");
    }

    // The layout `huggingface_hub` uses: refs, relative symlinks into content-addressed blobs,
    // and only the files a model needs.
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );
    assert_eq!(
        files_under(&snapshot),
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
        ]
    );
    for (file, lfs) in [
        ("config.json", false),
        ("model-00002-of-00003.safetensors", true),
    ] {
        let content = std::fs::read(local.join(file)).unwrap();
        let link = std::fs::read_link(snapshot.join(file)).unwrap();
        assert_eq!(
            link,
            Path::new("../../blobs").join(etag(&content, lfs)),
            "{file}"
        );
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            content,
            "{file}"
        );
    }
    assert!(server.requests_for("README.md").is_empty());
    assert!(server.requests_for("pytorch_model.bin").is_empty());

    // Cached: a second run asks only for the commit, and downloads nothing.
    let before = server.seen().len();
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert!(!stderr.contains("Download"), "{stderr}");
    let after = server.seen();
    assert_eq!(after.len(), before + 1);
    assert_eq!(
        after[before].path,
        "/api/models/tiny/qwen2-sharded/revision/main"
    );

    // With the hub down or gone, the cache answers (with a warning); offline, without one.
    server.hub.repos["tiny/qwen2-sharded"]
        .lock()
        .unwrap()
        .status = Some(503);
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert_eq!(
        stderr,
        format!(
            "Warning: cannot reach {} (HTTP 503); using model `tiny/qwen2-sharded` from the \
             cache (commit aaaaaaaaaaaa)\n",
            server.endpoint
        )
    );
    server.stop();
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert!(
        stderr.contains(&format!("Warning: cannot reach {}", server.endpoint))
            && stderr
                .contains("using model `tiny/qwen2-sharded` from the cache (commit aaaaaaaaaaaa)"),
        "{stderr}"
    );
    let offline = [("HF_HUB_OFFLINE", "1")];
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &offline, &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert_eq!(stderr, "");
    // A pinned commit in the cache needs no hub either.
    let pinned = format!("tiny/qwen2-sharded@{sha}");
    let (stdout, _) = succeed(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", &pinned, "--json"],
    ));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);

    // What the cache lacks is named, in one line.
    let cache = home.join("hub").display().to_string();
    assert_eq!(
        one_line_error(distill(
            &home,
            &server.endpoint,
            &offline,
            &["inspect", "tiny/other"]
        )),
        format!(
            "error: HF_HUB_OFFLINE is set and model `tiny/other` (revision `main`) is not in \
             the Hugging Face cache `{cache}`, nor is it a local path"
        )
    );
    std::fs::remove_file(snapshot.join("model-00002-of-00003.safetensors")).unwrap();
    assert_eq!(
        one_line_error(distill(&home, &server.endpoint, &offline, &args)),
        format!(
            "error: HF_HUB_OFFLINE is set and `model-00002-of-00003.safetensors` of model \
             `tiny/qwen2-sharded` is not in the Hugging Face cache `{cache}`"
        )
    );
    assert_eq!(
        one_line_error(distill(
            &home,
            &server.endpoint,
            &[],
            &["inspect", "tiny/other"]
        )),
        format!(
            "error: cannot reach {} for model `tiny/other` (io: Connection refused (os error 111)), and it is not \
             in the Hugging Face cache `{cache}`; check the network or HF_ENDPOINT",
            server.endpoint
        )
    );
    // A local file not there (a typo, or not fetched yet) shaped like a hub file says both.
    let line = one_line_error(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", "runs/models/teacher.gguf"],
    ));
    assert!(
        line.starts_with("error: cannot reach")
            && line.ends_with(
                "(read as a hub file: no local file `runs/models/teacher.gguf` exists either)"
            ),
        "{line}"
    );
}

#[test]
fn missing_gated_and_wrong_names_fail_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let mut gated = repo('b', &[("config.json", fixture("tiny-qwen2/config.json"))]);
    gated.status = Some(401);
    let server = Server::start(vec![
        ("org/gated", gated),
        ("tiny/qwen2-sharded", sharded_repo()),
    ]);
    let e = &server.endpoint;
    let run = |env: &[(&str, &str)], args: &[&str]| one_line_error(distill(&home, e, env, args));

    assert_eq!(
        run(&[], &["inspect", "org/missing"]),
        format!(
            "error: model `org/missing` was not found on {e}, nor as a local path (check the \
             name, or log in with HF_TOKEN if it is private)"
        )
    );
    assert_eq!(
        run(&[], &["inspect", "org/gated"]),
        format!(
            "error: model `org/gated` on {e} is gated or private (HTTP 401): accept its terms \
             on its page, then set HF_TOKEN to an access token (or log in, which writes the \
             token file in HF_HOME)"
        )
    );
    assert_eq!(
        run(&[("HF_TOKEN", "hf_env")], &["inspect", "org/gated"]),
        format!(
            "error: model `org/gated` on {e} is gated or private (HTTP 401): the token from \
             HF_TOKEN was refused; accept the model's terms on its page, or use a token with \
             access"
        )
    );
    assert_eq!(
        run(&[], &["inspect", "tiny/qwen2-sharded@v9"]),
        format!("error: model `tiny/qwen2-sharded` has no revision `v9` on {e}")
    );
    assert_eq!(
        run(&[], &["inspect", "tiny/qwen2-sharded:Q4_K_M"]),
        "error: model `tiny/qwen2-sharded` has no `.gguf` file"
    );
    // Every model argument resolves the same way.
    let problems = tmp.path().join("problems.jsonl");
    std::fs::write(&problems, "{\"problem\": \"1 + 1?\", \"answer\": \"2\"}\n").unwrap();
    let problems = problems.to_str().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    for args in [
        &["serve", "org/missing"][..],
        &["convert", "org/missing", out],
        &[
            "compare",
            "--models",
            "org/missing",
            "--problems",
            problems,
            "--out",
            out,
        ],
        &[
            "train",
            "--base",
            "org/missing",
            "--corpus",
            problems,
            "--out",
            out,
        ],
        &[
            "generate",
            "--model",
            "org/missing",
            "--problems",
            problems,
            "--out",
            out,
        ],
    ] {
        let line = run(&[], args);
        assert!(
            line.contains("model `org/missing` was not found on"),
            "{args:?}: {line}"
        );
    }
    // The token goes with every request: HF_TOKEN, else the token file in HF_HOME.
    let auth = |path: &str| -> Vec<Option<String>> {
        server
            .seen()
            .into_iter()
            .filter(|s| s.path.contains(path))
            .map(|s| s.authorization)
            .collect()
    };
    assert_eq!(auth("org/gated"), [None, Some("Bearer hf_env".to_string())]);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), "hf_file\n").unwrap();
    let line = run(&[], &["inspect", "org/gated"]);
    assert!(
        line.contains(&format!(
            "the token from `{}` was refused",
            home.join("token").display()
        )),
        "{line}"
    );
    assert_eq!(
        auth("org/gated").last().unwrap().as_deref(),
        Some("Bearer hf_file")
    );
}

#[test]
fn gguf_files_are_picked_and_downloads_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let llama = fixture("tiny-llama.gguf");
    let qwen2 = fixture("tiny-qwen2.gguf");
    let mut cut = repo('c', &[("tiny-llama.gguf", llama.clone())]);
    cut.cut_once = vec!["tiny-llama.gguf".into()];
    let server = Server::start(vec![
        (
            "tiny/gguf",
            repo(
                'd',
                &[
                    ("tiny-llama.gguf", llama.clone()),
                    ("q/tiny-qwen2.gguf", qwen2.clone()),
                ],
            ),
        ),
        ("tiny/cut", cut),
    ]);
    let e = &server.endpoint;
    assert_eq!(
        one_line_error(distill(&home, e, &[], &["inspect", "tiny/gguf"])),
        "error: model `tiny/gguf` has 2 `.gguf` files; pick one with `tiny/gguf/FILE.gguf` or \
         `tiny/gguf:QUANT` (q/tiny-qwen2.gguf, tiny-llama.gguf)"
    );

    // A file in a subfolder, by path: the snapshot keeps the subfolder.
    let (stdout, _) = succeed(distill(
        &home,
        e,
        &[],
        &["inspect", "tiny/gguf/q/tiny-qwen2.gguf", "--json"],
    ));
    let report = inspect_json(&stdout);
    let snapshot = home
        .join("hub/models--tiny--gguf/snapshots")
        .join("d".repeat(40));
    assert_eq!(
        report["path"],
        snapshot.join("q/tiny-qwen2.gguf").display().to_string()
    );
    assert_eq!(report["architecture"], "qwen2");
    assert_eq!(report["format"], "gguf");
    assert_eq!(files_under(&snapshot), ["q"]);

    // A partial download from an earlier run (`blobs/<etag>.part`) continues where it stopped.
    let content = std::fs::read(&llama).unwrap();
    let blobs = home.join("hub/models--tiny--gguf/blobs");
    let blob = blobs.join(etag(&content, true));
    let half = content.len() / 2;
    std::fs::write(blob.with_extension("part"), &content[..half]).unwrap();
    let (stdout, _) = succeed(distill(
        &home,
        e,
        &[],
        &["inspect", "tiny/gguf:llama", "--json"],
    ));
    assert_eq!(inspect_json(&stdout)["architecture"], "llama");
    let ranges: Vec<Option<String>> = server
        .requests_for("tiny/gguf/resolve/main/tiny-llama.gguf")
        .into_iter()
        .map(|s| s.range)
        .collect();
    assert!(
        ranges.contains(&Some(format!("bytes={half}-")))
            && !ranges.contains(&Some("bytes=0-".into())),
        "{ranges:?}"
    );
    assert_eq!(std::fs::read(&blob).unwrap(), content);
    assert!(!blob.with_extension("part").exists());

    // A transfer that breaks off mid-file resumes within the run; `generate` records the
    // teacher by the name it was given.
    let problems = tmp.path().join("problems.jsonl");
    std::fs::write(
        &problems,
        "{\"id\": \"p0\", \"problem\": \"Tom has 2 apples and buys 3 more. How many now?\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("corpus");
    let (_, stderr) = succeed(distill(
        &home,
        e,
        &[],
        &[
            "--threads",
            "1",
            "generate",
            "--model",
            "tiny/cut:llama",
            "--problems",
            problems.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ],
    ));
    let ranges: Vec<Option<String>> = server
        .requests_for("tiny/cut/resolve/main/tiny-llama.gguf")
        .into_iter()
        .map(|s| s.range)
        .collect();
    let resumed = format!("bytes={}-", content.len() / 2);
    assert!(ranges.contains(&Some(resumed)), "{ranges:?}\n{stderr}");
    let cut_blob = home
        .join("hub/models--tiny--cut/blobs")
        .join(etag(&content, true));
    assert_eq!(std::fs::read(cut_blob).unwrap(), content);
    let reader = ShardReader::open(&[out]).unwrap();
    let mut teachers = Vec::new();
    for batch in reader.batches() {
        for record in records_from_batch(&batch.unwrap()).unwrap() {
            teachers.push(record.teacher);
        }
    }
    assert_eq!(teachers, ["tiny/cut:llama"]);
}
