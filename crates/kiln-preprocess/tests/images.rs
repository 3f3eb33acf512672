//! Image folders as a source: fixtures/images/digits (PNG files made from the digits
//! fixture, some RGB, some at twice the size) read back as the same pixel values, and
//! each documented bad case — a corrupt file, a file declaring a huge image, an empty
//! class folder, no class folders — an error naming it; with `skip_unreadable`, unreadable
//! files skipped and counted in the profile.

use kiln_preprocess::{Augment, Config, Source, Split, prepare};
use std::path::{Path, PathBuf};

/// The first `n` rows of fixtures/digits.csv: (label, 64 values 0–16).
fn digits(n: usize) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits.csv"),
    )
    .unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let li = header.iter().position(|h| *h == "label").unwrap();
    lines
        .take(n)
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            let px = v
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != li)
                .map(|(_, p)| p.parse::<u8>().unwrap())
                .collect();
            (v[li].to_string(), px)
        })
        .collect()
}

/// fixtures/images/digits (written by `cargo run -p kiln-preprocess --example
/// make_image_fixture` from the first 150 digits rows: `<label>/<row>.png`, some
/// `-rgb.png`, some `-16.png` at twice the size).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images/digits")
}

/// A copy of the fixture, to add bad files to; with only the classes `keep` when given.
fn copy_fixture(keep: Option<&str>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for class in std::fs::read_dir(fixture()).unwrap() {
        let class = class.unwrap().path();
        let name = class.file_name().unwrap().to_owned();
        if keep.is_some_and(|k| name != k) {
            continue;
        }
        std::fs::create_dir(d.path().join(&name)).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.path().join(&name).join(f.file_name().unwrap())).unwrap();
        }
    }
    d
}

fn config(source: Source) -> Config {
    Config {
        source,
        target: "label".into(),
        task: None,
        positive_class: None,
        column_types: Default::default(),
        steps: Some(vec![]),
        split: Split {
            valid: 0.2,
            test: Some(0.2),
            stratify: true,
            row_id: None,
        },
        augment: Augment::default(),
        shard_rows: None,
        load: Default::default(),
        memory_mb: 1024,
        seed: 1,
        engine: Default::default(),
        scheduler: None,
    }
}

fn images(path: &Path, channels: usize) -> Source {
    Source::Images {
        path: Some(path.to_path_buf()),
        train: None,
        test: None,
        image: [8, 8],
        channels,
        skip_unreadable: false,
    }
}

/// The folder reads back as its pixels: 10 classes named after their folders, every
/// grey 8 x 8 image exactly, RGB files converted to the same grey, 16 x 16 files resized
/// to 8 x 8 (close: bilinear, a mean of at most 30 levels off), and with `channels = 3`
/// three equal planes.
#[test]
fn an_image_folder_reads_back_as_its_pixels() {
    let rows = digits(150);
    let out = prepare(&config(images(&fixture(), 1))).unwrap();
    let s = &out.schema;
    assert_eq!(
        s.class_labels,
        (0..10).map(|d| d.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(s.feature_names.len(), 64);
    assert_eq!(s.feature_names[63], "pixel_63");
    assert_eq!(out.rows.iter().sum::<usize>(), 150);
    // every original image is among the rows of the splits, by its exact values (grey
    // and RGB files alike); the doubled ones within a few levels
    let all: Vec<(u32, &[f32])> = out
        .splits
        .iter()
        .flat_map(|d| d.labels.iter().copied().zip(d.features.chunks(64)))
        .collect();
    let mut exact = 0;
    for (i, (label, px)) in rows.iter().enumerate() {
        let want: Vec<f32> = px.iter().map(|&v| f32::from(v * 15)).collect();
        let class = s.class_labels.iter().position(|c| c == label).unwrap() as u32;
        // exact, or for a resized image a mean difference of at most 30 levels of 240
        let limit = if i % 7 == 3 { 30.0 } else { 0.0 };
        let found = all.iter().any(|(l, f)| {
            let mean = f.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / 64.0;
            *l == class && mean <= limit
        });
        assert!(found, "image {i} (class {label}) not read back");
        exact += usize::from(i % 7 != 3);
    }
    assert!(exact >= 120);
    // three channels: each plane the grey values (an RGB file of a grey image)
    let rgb = prepare(&config(images(&fixture(), 3))).unwrap();
    assert_eq!(rgb.schema.feature_names.len(), 192);
    for f in rgb.splits.iter().flat_map(|d| d.features.chunks(192)) {
        assert_eq!(f[..64], f[64..128]);
        assert_eq!(f[64..128], f[128..]);
    }
}

/// Each bad folder is an error naming the file or folder at fault.
#[test]
fn bad_image_folders_are_errors_naming_the_file() {
    let err = |dir: &Path| prepare(&config(images(dir, 1))).unwrap_err().to_string();
    // a corrupt file
    let d = copy_fixture(None);
    let bad = d.path().join("3/zz-broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = err(d.path());
    assert!(
        e.contains("zz-broken.png: not a readable image") && e.contains("remove or replace it"),
        "{e}"
    );

    // a decompression bomb: a valid PNG header declaring 100000 x 100000 pixels
    let d = copy_fixture(None);
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend(100_000u32.to_be_bytes());
    png.extend(100_000u32.to_be_bytes());
    png.extend([8, 0, 0, 0, 0]);
    let crc = crc32(&png[12..]);
    png.extend(crc.to_be_bytes());
    std::fs::write(d.path().join("1/zz-bomb.png"), &png).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("zz-bomb.png: declares an image larger than kiln decodes"),
        "{e}"
    );

    // an empty class folder
    let d = copy_fixture(None);
    std::fs::create_dir(d.path().join("ten")).unwrap();
    let e = err(d.path());
    assert!(
        e.contains("the class folder `ten` holds no image files"),
        "{e}"
    );

    // no class folders
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("loose.png"), b"x").unwrap();
    let e = err(d.path());
    assert!(e.contains("no class folders"), "{e}");

    // one class only: the task's own error
    let d = copy_fixture(Some("1"));
    let e = err(d.path());
    assert!(
        e.contains("target `label` has a single class (1); a classifier needs at least two"),
        "{e}"
    );
}

/// CRC-32 (IEEE) of `bytes`, as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `skip_unreadable = true`: a corrupt file and a decompression bomb are skipped, counted
/// in profile.json's `dropped_rows.unreadable_files` and listed with their reasons, the
/// other 150 images read as without them; a class whose every file is unreadable is
/// still an error. Without the option, the corrupt file's error says how to skip it.
#[test]
fn skip_unreadable_skips_and_counts_bad_files() {
    let d = copy_fixture(None);
    std::fs::write(
        d.path().join("3/zz-broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    std::fs::write(d.path().join("5/zz-text.jpg"), b"just text").unwrap();
    let skipping = |dir: &Path| {
        let mut s = images(dir, 1);
        if let Source::Images {
            skip_unreadable, ..
        } = &mut s
        {
            *skip_unreadable = true;
        }
        config(s)
    };
    let out = prepare(&skipping(d.path())).unwrap();
    let clean = prepare(&config(images(&fixture(), 1))).unwrap();
    assert_eq!(out.profile.dropped_rows.unreadable_files, 2);
    assert_eq!(out.profile.dropped_rows.total(), 2);
    let files: Vec<&str> = out
        .profile
        .skipped_files
        .iter()
        .map(|f| f.file.as_str())
        .collect();
    assert!(
        files[0].ends_with("3/zz-broken.png") && files[1].ends_with("5/zz-text.jpg"),
        "{files:?}"
    );
    assert!(
        out.profile.skipped_files[0]
            .reason
            .contains("not a readable image"),
        "{:?}",
        out.profile.skipped_files
    );
    // the same 150 images, split the same way
    assert_eq!(out.rows, clean.rows);
    for (a, b) in out.splits.iter().zip(&clean.splits) {
        assert_eq!(a.features, b.features);
        assert_eq!(a.labels, b.labels);
    }
    // without the option: the error says how to skip
    let e = prepare(&config(images(d.path(), 1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("set `skip_unreadable = true`"), "{e}");
    // a class with nothing readable is still an error
    let d = copy_fixture(None);
    for f in std::fs::read_dir(d.path().join("4")).unwrap() {
        std::fs::write(f.unwrap().path(), b"broken").unwrap();
    }
    let e = prepare(&skipping(d.path())).unwrap_err().to_string();
    assert!(
        e.contains("none of the") && e.contains("class `4` could be read"),
        "{e}"
    );
}
