//! Writes the CRD YAML of every oauth3 resource into a directory (default `charts/oauth3/crds`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next().as_deref() {
        Some("-h" | "--help") => {
            println!(
                "crdgen [DIR]\n\nWrites one YAML file per oauth3 CustomResourceDefinition into DIR \
                 (default: charts/oauth3/crds).\n`make generate` runs it; a test fails when the \
                 committed files drift from the Rust types."
            );
            return Ok(());
        }
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("charts/oauth3/crds"),
    };
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in oauth3_crds::crds_yaml()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
