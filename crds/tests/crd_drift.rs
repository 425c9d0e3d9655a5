//! The CRD YAML committed under `charts/oauth3/crds/` is exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/oauth3/crds");
    let generated = oauth3_crds::crds_yaml().expect("CRDs serialise");
    assert_eq!(generated.len(), 3);
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
        // A SandboxPool has no phase: its column is how many members are ready.
        let state = if crd.spec.names.kind == "SandboxPool" {
            "Ready"
        } else {
            "Phase"
        };
        assert!(
            columns.contains(&state) && columns.contains(&"Age"),
            "{columns:?}"
        );
        assert_eq!(crd.spec.scope, "Namespaced");
    }
}

/// Collects the paths of schema properties that have no description.
fn undocumented(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            let here = format!("{path}.{name}");
            let documented = child
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.trim().is_empty());
            if !documented {
                out.push(here.clone());
            }
            undocumented(child, &here, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        undocumented(values, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_spec_and_status_field_has_a_description_for_kubectl_explain() {
    for crd in oauth3_crds::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let root = &schema["openAPIV3Schema"];
        let mut missing = Vec::new();
        for top in ["spec", "status"] {
            undocumented(&root["properties"][top], top, &mut missing);
        }
        // Condition is Kubernetes' own type and carries its own docs.
        missing.retain(|p| !p.contains(".conditions[]"));
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn the_description_check_finds_undocumented_nested_fields() {
    let schema = serde_json::json!({"properties": {
        "a": {"description": "ok", "items": {"properties": {"b": {"type": "string"}}}},
        "c": {"type": "object", "additionalProperties": {"properties": {"d": {"description": " "}}}}
    }});
    let mut missing = Vec::new();
    undocumented(&schema, "spec", &mut missing);
    missing.sort();
    assert_eq!(missing, vec!["spec.a[].b", "spec.c", "spec.c{}.d"]);
}
