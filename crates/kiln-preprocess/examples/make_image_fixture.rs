//! Writes fixtures/images/digits: the first 150 rows of fixtures/digits.csv as 8 x 8 PNG
//! images in one folder per class (`<label>/<row>.png`, values x 15 so 0–240), every
//! 5th saved as RGB (`<row>-rgb.png`) and every 7th at 16 x 16 (`<row>-16.png`, each
//! pixel doubled), for the tests of the images source. Rerun with
//! `cargo run -p kiln-preprocess --example make_image_fixture`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let text = std::fs::read_to_string(root.join("digits.csv"))?;
    let out = root.join("images/digits");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("digits.csv is empty")?
        .split(',')
        .collect();
    let li = header
        .iter()
        .position(|h| *h == "label")
        .ok_or("digits.csv has no label column")?;
    for (i, line) in lines.take(150).enumerate() {
        let v: Vec<&str> = line.split(',').collect();
        let px: Vec<u8> = v
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != li)
            .map(|(_, p)| p.parse::<u8>().map(|p| p * 15))
            .collect::<Result<_, _>>()?;
        let class = out.join(v[li]);
        std::fs::create_dir_all(&class)?;
        let grey = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([px[(y * 8 + x) as usize]]));
        if i % 7 == 3 {
            image::imageops::resize(&grey, 16, 16, image::imageops::FilterType::Nearest)
                .save(class.join(format!("{i:03}-16.png")))?;
        } else if i % 5 == 1 {
            image::DynamicImage::ImageLuma8(grey)
                .to_rgb8()
                .save(class.join(format!("{i:03}-rgb.png")))?;
        } else {
            grey.save(class.join(format!("{i:03}.png")))?;
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}
