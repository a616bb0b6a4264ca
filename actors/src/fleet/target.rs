//! Build targets: what the default pipeline builds — a list of `{ name, attribute, kind }`,
//! or every host the flake declares (`hosts = "auto"`: each `nixosConfigurations.<name>`'s
//! toplevel and each `homeConfigurations.<name>`'s activation package) — and the one
//! `nix eval` that turns them into derivations: the expression it evaluates and the lines
//! it prints. An attribute is looked up as `nix build <flake>#<attribute>` would: under
//! `packages.<system>.`, then `legacyPackages.<system>.`, then as given.

use serde::Deserialize;
use tailcache_store::StorePath;
use tailcache_store::nix_string::nix_string;
use tailcache_wire::generation::TargetKind;

/// One configured target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// The host's name (`laptop`, `alice@laptop`): the key of `GET /hosts/<name>`.
    pub name: String,
    /// Flake output attribute path, e.g. `nixosConfigurations.laptop.config.system.build.toplevel`.
    pub attribute: String,
    pub kind: TargetKind,
}

impl TargetSpec {
    /// The target that the one-attribute shorthand (`build.attribute`) means: a NixOS
    /// toplevel or a home-manager activation package is named after its configuration,
    /// anything else after the attribute itself.
    pub fn from_attribute(attribute: &str) -> TargetSpec {
        let path = parse_attr_path(attribute).unwrap_or_default();
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let (kind, name) = match p.as_slice() {
            [
                "nixosConfigurations",
                n,
                "config",
                "system",
                "build",
                "toplevel",
            ] => (TargetKind::Nixos, (*n).to_owned()),
            ["homeConfigurations", n, "activationPackage"] => (TargetKind::Home, (*n).to_owned()),
            _ => (TargetKind::Package, attribute.to_owned()),
        };
        let name = if valid_target_name(&name) {
            name
        } else {
            "default".to_owned()
        };
        TargetSpec {
            name,
            attribute: attribute.to_owned(),
            kind,
        }
    }

    /// The attribute `hosts = "auto"` builds for a discovered configuration.
    pub fn discovered(name: &str, kind: TargetKind) -> TargetSpec {
        let quoted = attr_name(name);
        let attribute = match kind {
            TargetKind::Nixos => {
                format!("nixosConfigurations.{quoted}.config.system.build.toplevel")
            }
            TargetKind::Home => format!("homeConfigurations.{quoted}.activationPackage"),
            TargetKind::Package => quoted,
        };
        TargetSpec {
            name: name.to_owned(),
            attribute,
            kind,
        }
    }
}

/// What a build's targets are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Exactly these.
    List(Vec<TargetSpec>),
    /// Every `nixosConfigurations.*` and `homeConfigurations.*` of the flake.
    Auto,
}

impl Targets {
    /// The configured list (empty for `Auto`, whose targets are known after an evaluation).
    pub fn listed(&self) -> &[TargetSpec] {
        match self {
            Targets::List(l) => l,
            Targets::Auto => &[],
        }
    }
}

/// Whether `name` can name a target: it becomes a file name under the state directory and
/// a URL path segment, so only `[A-Za-z0-9._@+-]`, not starting with `.` or `-`, at most
/// 128 bytes.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
}

/// Splits an attribute path at the dots outside double quotes (`a."b.c".d` → `a`, `b.c`,
/// `d`); `None` for an empty component or an unterminated quote.
pub fn parse_attr_path(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                was_quoted = true;
            }
            ('"', true) => quoted = false,
            ('\\', true) => cur.push(chars.next()?),
            ('.', false) => {
                if cur.is_empty() && !was_quoted {
                    return None;
                }
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (c, _) => cur.push(c),
        }
    }
    if quoted || (cur.is_empty() && !was_quoted) {
        return None;
    }
    out.push(cur);
    Some(out)
}

/// An attribute name as it may appear in an attribute path: bare when it is an identifier,
/// else quoted.
fn attr_name(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_'-".contains(c));
    if bare {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The expression `nix eval --impure --raw --expr` evaluates: one JSON line per target,
/// `{"name","kind","drv","out"}`, or `{"name","kind","error"}` when the target's attribute
/// is missing or throws (other targets still evaluate). Evaluating `drvPath` writes the
/// derivations to the store, so the build step then builds exactly these.
pub fn eval_expression(checkout: &str, targets: &Targets) -> String {
    let list = match targets {
        Targets::Auto => r#"
    (map (n: target n "nixos" [ [ "nixosConfigurations" n "config" "system" "build" "toplevel" ] ])
      (names "nixosConfigurations"))
    ++ (map (n: target n "home" [ [ "homeConfigurations" n "activationPackage" ] ])
      (names "homeConfigurations"))"#
            .to_owned(),
        Targets::List(specs) => {
            let mut s = String::from("[");
            for t in specs {
                let path: Vec<String> = parse_attr_path(&t.attribute)
                    .unwrap_or_else(|| vec![t.attribute.clone()])
                    .iter()
                    .map(|c| nix_string(c))
                    .collect();
                s.push_str(&format!(
                    "\n    (target {} {} (lookup [ {} ]))",
                    nix_string(&t.name),
                    nix_string(t.kind.as_str()),
                    path.join(" ")
                ));
            }
            s.push_str("\n  ]");
            s
        }
    };
    format!(
        r#"let
  flake = builtins.getFlake {checkout};
  outputs = flake.outputs;
  system = builtins.currentSystem;
  get = path: builtins.foldl'
    (a: k: if builtins.isAttrs a && builtins.hasAttr k a then builtins.getAttr k a else null)
    outputs path;
  first = paths: builtins.foldl' (found: p: if found != null then found else get p) null paths;
  lookup = path: [ ([ "packages" system ] ++ path) ([ "legacyPackages" system ] ++ path) path ];
  names = set: if builtins.isAttrs (outputs.${{set}} or null)
    then builtins.attrNames outputs.${{set}} else [ ];
  target = name: kind: candidates:
    let
      r = builtins.tryEval (let d = first candidates; in
        if d == null then null else builtins.seq d.drvPath d);
    in builtins.toJSON ({{ inherit name kind; }} //
      (if !r.success then {{ error = "evaluation failed (see the log)"; }}
       else if r.value == null then {{ error = "attribute not found"; }}
       else {{
         drv = builtins.unsafeDiscardStringContext r.value.drvPath;
         out = builtins.unsafeDiscardStringContext r.value.outPath;
       }}));
in builtins.concatStringsSep "\n" ({list}) + "\n"
"#,
        checkout = nix_string(checkout),
    )
}

/// One line the evaluation printed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct EvalLine {
    name: String,
    kind: TargetKind,
    drv: Option<String>,
    out: Option<String>,
    error: Option<String>,
}

/// A target as evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    pub spec: TargetSpec,
    pub result: Result<Derivation, String>,
}

/// What the build step builds for a target: its derivation and the out path to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub drv: StorePath,
    pub out: StorePath,
}

/// Reads the evaluation's lines (other lines are ignored, a target named twice counts once),
/// sorted by target name.
/// For listed targets the configured spec is kept; discovered names that cannot name a
/// target are reported in the second list.
pub fn parse_eval_output(
    lines: &[String],
    targets: &Targets,
    store_dir: &str,
) -> (Vec<Evaluated>, Vec<String>) {
    let mut out: Vec<Evaluated> = Vec::new();
    let mut refused = Vec::new();
    for line in lines {
        let Ok(l) = serde_json::from_str::<EvalLine>(line.trim()) else {
            continue;
        };
        if out.iter().any(|e| e.spec.name == l.name) {
            continue;
        }
        let spec = match targets {
            Targets::List(specs) => match specs.iter().find(|s| s.name == l.name) {
                Some(s) => s.clone(),
                None => continue,
            },
            Targets::Auto if valid_target_name(&l.name) => TargetSpec::discovered(&l.name, l.kind),
            Targets::Auto => {
                refused.push(l.name);
                continue;
            }
        };
        let parse = |p: Option<String>, what: &str| -> Result<StorePath, String> {
            let p = p.ok_or_else(|| format!("the evaluation gave no {what}"))?;
            StorePath::from_absolute(store_dir, &p).map_err(|e| format!("{what} {p}: {e}"))
        };
        let result = match l.error {
            Some(e) => Err(e),
            None => parse(l.drv, "derivation").and_then(|drv| {
                let out = parse(l.out, "out path")?;
                Ok(Derivation { drv, out })
            }),
        };
        out.push(Evaluated { spec, result });
    }
    if let Targets::List(specs) = targets {
        for s in specs {
            if !out.iter().any(|e| e.spec.name == s.name) {
                out.push(Evaluated {
                    spec: s.clone(),
                    result: Err("the evaluation did not report it".to_owned()),
                });
            }
        }
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    (out, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_paths_split_outside_quotes() {
        let p = parse_attr_path(r#"homeConfigurations."alice@laptop".activationPackage"#);
        assert_eq!(
            p.unwrap(),
            ["homeConfigurations", "alice@laptop", "activationPackage"]
        );
        assert_eq!(parse_attr_path(r#"a."b.c\"d""#).unwrap(), ["a", "b.c\"d"]);
        assert_eq!(parse_attr_path("default").unwrap(), ["default"]);
        assert_eq!(parse_attr_path(r#"a."""#).unwrap(), ["a", ""]);
        for bad in ["", "a..b", "a.", ".a", "a.\"b"] {
            assert_eq!(parse_attr_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shorthand_names_its_target() {
        let t =
            TargetSpec::from_attribute("nixosConfigurations.desktop.config.system.build.toplevel");
        assert_eq!((t.name.as_str(), t.kind), ("desktop", TargetKind::Nixos));
        let t = TargetSpec::from_attribute(r#"homeConfigurations."bob@desk".activationPackage"#);
        assert_eq!((t.name.as_str(), t.kind), ("bob@desk", TargetKind::Home));
        let t = TargetSpec::from_attribute("default");
        assert_eq!((t.name.as_str(), t.kind), ("default", TargetKind::Package));
        let t = TargetSpec::from_attribute("packages.x86_64-linux.\"a b\"");
        assert_eq!(t.name, "default", "a name that is no file name falls back");
    }

    #[test]
    fn target_names() {
        for ok in ["laptop", "alice@laptop", "a.b-c_d+e", "x1"] {
            assert!(valid_target_name(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a b", "..", &"x".repeat(129)] {
            assert!(!valid_target_name(bad), "{bad}");
        }
        assert_eq!(
            TargetSpec::discovered("alice@laptop", TargetKind::Home).attribute,
            r#"homeConfigurations."alice@laptop".activationPackage"#
        );
        assert_eq!(
            TargetSpec::discovered("web-1", TargetKind::Nixos).attribute,
            "nixosConfigurations.web-1.config.system.build.toplevel"
        );
    }

    #[test]
    fn strings_cannot_escape_the_expression() {
        let e = eval_expression(
            "/srv/x\"y",
            &Targets::List(vec![TargetSpec {
                name: "n".into(),
                attribute: "a.\"${b}\"".into(),
                kind: TargetKind::Package,
            }]),
        );
        assert!(e.contains(r#"builtins.getFlake "/srv/x\"y""#), "{e}");
        assert!(e.contains(r#"(lookup [ "a" "\${b}" ])"#), "{e}");
    }

    fn line(name: &str, kind: &str, hash: char) -> String {
        let h: String = std::iter::repeat_n(hash, 32).collect();
        format!(
            r#"{{"name":"{name}","kind":"{kind}","drv":"/nix/store/{h}-{name}.drv","out":"/nix/store/{h}-{name}"}}"#
        )
    }

    #[test]
    fn eval_output_of_auto_discovery() {
        let lines = vec![
            "warning: something".to_owned(),
            line("laptop", "nixos", 'a'),
            line("alice@laptop", "home", 'b'),
            r#"{"name":"server","kind":"nixos","error":"evaluation failed (see the log)"}"#.into(),
            r#"{"name":"bad/name","kind":"nixos","error":"x"}"#.into(),
            line("laptop", "nixos", 'c'),
        ];
        let (ev, refused) = parse_eval_output(&lines, &Targets::Auto, "/nix/store");
        assert_eq!(refused, ["bad/name"]);
        let names: Vec<&str> = ev.iter().map(|e| e.spec.name.as_str()).collect();
        assert_eq!(names, ["alice@laptop", "laptop", "server"]);
        let d = ev[1].result.as_ref().unwrap();
        assert!(d.drv.name().ends_with(".drv"));
        assert_eq!(d.out.hash().to_string(), "a".repeat(32));
        assert_eq!(ev[0].spec.kind, TargetKind::Home);
        assert_eq!(ev[2].result, Err("evaluation failed (see the log)".into()));
    }

    #[test]
    fn eval_output_of_listed_targets_keeps_their_specs() {
        let spec = TargetSpec {
            name: "web".into(),
            attribute: "packages.x86_64-linux.web".into(),
            kind: TargetKind::Package,
        };
        let missing = TargetSpec {
            name: "db".into(),
            ..spec.clone()
        };
        let targets = Targets::List(vec![spec.clone(), missing]);
        let (ev, _) = parse_eval_output(&[line("web", "package", 'd')], &targets, "/nix/store");
        assert_eq!(ev[1].spec, spec);
        assert!(ev[1].result.is_ok());
        assert_eq!(ev[0].spec.name, "db");
        assert!(ev[0].result.is_err());
    }
}
