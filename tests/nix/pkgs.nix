# A stand-in for nixpkgs' package set, for evaluating the modules offline with the real `lib`
# and the real home-manager (tests/nix_modules.rs): nothing here is ever built. Packages are
# fake derivations (an attribute set of type "derivation" whose out path is a made-up store
# path); what the modules write through the trivial builders is kept readable:
# - writeTextFile and its relatives put the text into the store with `builtins.toFile`, so
#   the out path of a text file IS that text (whatever `destination` says; a path below it,
#   such as home-manager's "${unit}/tailcache-agent.service", is read at its first
#   component that exists: the test reads it back from the evaluation's store);
# - formats.<f>.generate writes `{ "format": f, "value": … }` as JSON the same way, since
#   this stand-in cannot run remarshal: the test renders it with its own TOML writer and has
#   the binaries' strict parsers read the result;
# - runCommand, buildEnv, symlinkJoin, … are fake derivations that keep their arguments.
# Option types (formats.<f>.type) are real `lib` types, shaped as nixpkgs declares them.
# `names` are packages the modules only mention (home-manager's defaults): fake, version 1.0.
{
  lib,
  # The directory standing in for nixpkgs itself (`pkgs.path`): its `lib` is the real one.
  path,
  system ? "x86_64-linux",
  # Package names that are only referred to.
  names ? [ ],
}:
let
  # 32 characters of Nix's base32 alphabet, from the name, so out paths look like store paths.
  fakeHash =
    s:
    builtins.replaceStrings
      [ "e" "o" "u" "t" ]
      [ "g" "p" "v" "w" ]
      (builtins.substring 0 32 (builtins.hashString "sha256" s));

  fake =
    name: extra:
    let
      parsed = builtins.parseDrvName name;
      self = {
        type = "derivation";
        inherit name system;
        pname = parsed.name;
        version = parsed.version;
        outPath = "/nix/store/${fakeHash name}-${name}";
        drvPath = "/nix/store/${fakeHash "drv:${name}"}-${name}.drv";
        outputName = "out";
        outputs = [ "out" ];
        meta = {
          mainProgram = parsed.name;
        };
        passthru = { };
        override = _: self;
        overrideAttrs = f: self // (if builtins.isFunction f then f self else f);
      }
      // extra;
    in
    self
    // {
      out = self;
      bin = self;
      all = [ self ];
    };

  package = pname: fake "${pname}-1.0" { };

  # A text file in the store, read back by the test.
  text =
    name: contents: extra:
    fake name (
      {
        text = contents;
        outPath = builtins.toFile (sanitize name) contents;
      }
      // extra
    );
  # toFile's names allow fewer characters than derivation names.
  sanitize = builtins.replaceStrings [ "@" ":" " " ] [ "-" "-" "-" ];

  generator =
    format: name: value:
    fake name {
      inherit value format;
      outPath = builtins.toFile (sanitize name) (builtins.toJSON { inherit format value; });
    };

  # The option types of nixpkgs' pkgs-lib/formats.nix, as far as modules declare options
  # with them.
  jsonValue =
    with lib.types;
    let
      # (`path` is this file's argument: the type is spelled out.)
      valueType =
        nullOr (oneOf [
          bool
          int
          float
          str
          lib.types.path
          (attrsOf valueType)
          (listOf valueType)
        ])
        // {
          description = "JSON value";
        };
    in
    valueType;
  iniAtom =
    with lib.types;
    nullOr (oneOf [
      bool
      int
      float
      str
    ])
    // {
      description = "INI atom (null, bool, int, float or string)";
    };
  iniValue = lib.types.either iniAtom (lib.types.listOf iniAtom);
  structured = format: _: {
    type = jsonValue;
    generate = generator format;
  };
  iniLike = format: _: {
    type = lib.types.attrsOf (lib.types.attrsOf iniValue);
    lib.types.atom = iniAtom;
    generate = generator format;
  };

  hostPlatform = lib.systems.elaborate system;

  referred = builtins.listToAttrs (
    map (n: {
      name = n;
      value = package n;
    }) names
  );
in
referred
// rec {
  inherit lib path system;
  pkgs = import path { inherit system; };
  buildPackages = pkgs;
  config = { };
  overlays = [ ];

  stdenv = fake "stdenv-linux" {
    inherit hostPlatform;
    buildPlatform = hostPlatform;
    targetPlatform = hostPlatform;
    isLinux = hostPlatform.isLinux;
    isDarwin = hostPlatform.isDarwin;
    shell = "/bin/sh";
  };
  stdenvNoCC = stdenv;

  writeTextFile =
    a:
    text a.name a.text {
      executable = a.executable or false;
      destination = a.destination or "";
    };
  writeText = name: t: text name t { };
  writeTextDir = p: t: text (baseNameOf p) t { destination = "/${p}"; };
  writeScript = name: t: text name t { executable = true; };
  writeScriptBin =
    name: t:
    text name t {
      executable = true;
      destination = "/bin/${name}";
    };
  writeShellScript = name: t: text name "#!/bin/sh\n${t}" { executable = true; };
  writeShellScriptBin =
    name: t:
    text name "#!/bin/sh\n${t}" {
      executable = true;
      destination = "/bin/${name}";
    };
  writeShellApplication =
    a:
    text a.name "#!/bin/sh\n${a.text}" {
      executable = true;
      destination = "/bin/${a.name}";
    };
  writers = {
    writeBash = name: t: text name "#!/bin/bash\n${t}" { executable = true; };
    writeBashBin =
      name: t:
      text name "#!/bin/bash\n${t}" {
        executable = true;
        destination = "/bin/${name}";
      };
    writeDash = name: t: text name "#!/bin/dash\n${t}" { executable = true; };
  };
  runCommand =
    name: env: script:
    fake name { inherit env script; };
  runCommandLocal = runCommand;
  runCommandNoCC = runCommand;
  symlinkJoin = a: fake a.name { inherit (a) paths; };
  buildEnv = a: fake a.name { inherit (a) paths; };
  linkFarm = name: entries: fake name { inherit entries; };
  callPackage = fn: _args: fake "${baseNameOf (toString fn)}-1.0" { };
  formats = {
    toml = structured "toml";
    json = structured "json";
    yaml = structured "yaml";
    yaml_1_1 = structured "yaml";
    yaml_1_2 = structured "yaml";
    xml = structured "xml";
    ini = iniLike "ini";
    keyValue = a: iniLike "keyValue" a // { type = lib.types.attrsOf iniValue; };
    iniWithGlobalSection =
      a:
      iniLike "iniWithGlobalSection" a
      // {
        type = lib.types.submodule {
          options = {
            sections = lib.mkOption {
              type = lib.types.attrsOf (lib.types.attrsOf iniValue);
              default = { };
            };
            globalSection = lib.mkOption {
              type = lib.types.attrsOf iniValue;
              default = { };
            };
          };
        };
      };
    javaProperties = _: {
      type = lib.types.attrsOf lib.types.str;
      generate = generator "javaProperties";
    };
  };

  # What the modules name, with versions where a module compares them.
  nix = fake "nix-2.28.4" { };
  tailcache = fake "tailcache-0.1.0" { };
  home-manager = package "home-manager";
  atuin = package "atuin";
  coreutils = package "coreutils";
  git = package "git";
  openssh = package "openssh";
  sqlite = package "sqlite";
  postgresql = package "postgresql";
  syncthing = package "syncthing";
  tailscale = package "tailscale";
  util-linux = package "util-linux";
  systemd = package "systemd";
  gnused = package "gnused";
}
