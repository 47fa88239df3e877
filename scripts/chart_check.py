#!/usr/bin/env python3
"""Offline checks of charts/ferrovia, driven by tests/chart.rs.

Runs in the virtual environment scripts/test.sh creates (/var/cache/ferrovia/chart-venv,
with helm-python-sdk and kubernetes-validate). Prints one JSON document on stdout.

  chart_check.py render CHART VALUES|- OUTDIR   render like `helm template` (install),
                                                 one file per manifest in OUTDIR; prints
                                                 {"files": [...], "docs": [...], "notes": "..."} or
                                                 {"error": "..."} when the chart refuses
  chart_check.py lint CHART VALUES|-            `helm lint --strict`; prints the report
  chart_check.py validate-custom CRD_DIR FILE...  custom resources against the CRDs' schemas;
                                                 prints {"FILE": null | "errors"}
  chart_check.py newest-schema                  the newest Kubernetes version whose
                                                 schemas kubernetes-validate ships
"""

import json
import os
import sys

import yaml


def load_values(path):
    if path == "-":
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def render(chart, values_path, outdir):
    import helm_python as helm

    values = load_values(values_path)
    try:
        rendered = helm.Chart.load(chart).render(
            values, name="ferrovia", namespace="kube-system", is_install=True
        )
    except helm.HelmError as e:
        return {"error": str(e)}
    files, docs, notes = [], [], ""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if not doc:
                continue
            # Namespaces first: `kubectl apply -f DIR` goes in file-name order.
            first = "0" if doc.get("kind") == "Namespace" else "1"
            name = "%s-%s-%d.yaml" % (first, template.replace("/", "_"), i)
            path = os.path.join(outdir, name)
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
            files.append(path)
            docs.append(doc)
    return {"files": files, "docs": docs, "notes": notes}


def lint(chart, values_path):
    import helm_python as helm

    return helm.lint(chart, load_values(values_path), strict=True)


def validate_custom(crd_dir, files):
    """Checks custom resources against the openAPIV3Schema of the CRDs in crd_dir
    (kubernetes-validate only knows the built-in kinds)."""
    import jsonschema

    schemas = {}
    for name in sorted(os.listdir(crd_dir)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(crd_dir, name), encoding="utf-8") as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    key = ("%s/%s" % (group, v["name"]), kind)
                    schemas[key] = v["schema"]["openAPIV3Schema"]
    out = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            out[path] = "no CRD in %s for %s %s" % (crd_dir, doc.get("apiVersion"), doc.get("kind"))
            continue
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path)
        )
        out[path] = (
            "; ".join("%s: %s" % ("/".join(str(p) for p in e.path), e.message) for e in errors)
            or None
        )
    return out


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "render" and len(args) == 3:
        result = render(*args)
    elif cmd == "lint" and len(args) == 2:
        result = lint(*args)
    elif cmd == "validate-custom" and len(args) >= 2:
        result = validate_custom(args[0], args[1:])
    elif cmd == "newest-schema" and not args:
        import kubernetes_validate

        result = kubernetes_validate.latest_version()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
