//! The CRD YAML committed under `charts/oauth3/crds/` is exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/oauth3/crds");
    let generated = oauth3_crds::crds_yaml().expect("CRDs serialise");
    assert_eq!(generated.len(), 2);
    for (file, yaml) in generated {
        let path = dir.join(&file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make generate`", path.display()));
        assert!(
            committed == yaml,
            "{} is out of date with crds/src; run `make generate` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_carry_status_subresource_short_names_and_printer_columns() {
    for crd in oauth3_crds::crds() {
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Phase") && columns.contains(&"Age"),
            "{columns:?}"
        );
        assert_eq!(crd.spec.scope, "Namespaced");
    }
}
