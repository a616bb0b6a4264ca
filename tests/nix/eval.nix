# tailcache's modules under the real module system, offline: nixpkgs' real `lib` and
# home-manager's real module list (from the vendored snapshots, unpacked by
# tests/common/modules.rs into `vendor`), a stand-in `pkgs` of fake derivations
# (./pkgs.nix) and the NixOS declarations the modules need (./nixos.nix). What the tests
# force and assert on comes out of the summaries below.
#
#   vendor/nixpkgs-lib/lib     nixpkgs' lib
#   vendor/home-manager        home-manager (modules/modules.nix is its module list)
#   vendor/nixpkgs             the stand-in for nixpkgs itself (`pkgs.path`): `lib` is the real
#                              one, default.nix gives ./pkgs.nix, nixos/modules/misc/* come
#                              from ./nixos.nix
{ vendor }:
let
  lib = import (vendor + "/nixpkgs-lib/lib");
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  # Packages home-manager's default-on modules refer to.
  referred = [
    "glibcLocales"
    "man"
    "shared-mime-info"
    "libxml2"
    "curl"
    "jq"
  ];
  pkgsFor =
    system:
    import ./pkgs.nix {
      inherit lib system;
      path = vendor + "/nixpkgs";
      names = referred;
    };
  pkgs = pkgsFor "x86_64-linux";

  # home-manager's manual is built from its docs/ tree, which the snapshot leaves out.
  noManual = {
    manual.manpages.enable = false;
  };
  realHmLib = import (vendor + "/home-manager/lib") { inherit lib; };
  hmLib = realHmLib // {
    homeManagerConfiguration =
      args: realHmLib.homeManagerConfiguration (args // { modules = args.modules ++ [ noManual ]; });
  };
  nixosParts = release: import ./nixos.nix { inherit lib pkgs release; };

  # This repository's flake, with the stand-ins as its inputs.
  flakeInputs = {
    nixpkgs = {
      inherit lib;
      outPath = vendor + "/nixpkgs";
      legacyPackages = lib.genAttrs systems pkgsFor;
    };
    home-manager = {
      lib = hmLib;
    };
  };
  flake = (import ../../flake.nix).outputs (flakeInputs // { self = flake; });

  failed = assertions: map (a: a.message) (lib.filter (a: !a.assertion) assertions);
in
rec {
  inherit
    lib
    pkgs
    pkgsFor
    flake
    ;

  # home-manager's NixOS module (home-manager.users.<name>), without the manual.
  homeManagerNixos = {
    imports = [ (vendor + "/home-manager/nixos") ];
    home-manager.sharedModules = [ noManual ];
  };

  # A NixOS configuration of `modules`, with the declarations of ./nixos.nix for `release`.
  nixos =
    {
      modules,
      release ? "26.05",
      specialArgs ? { },
    }:
    let
      parts = nixosParts release;
    in
    (lib.evalModules {
      class = "nixos";
      inherit specialArgs;
      modules = [
        parts.assertions
        parts.meta
        parts.declarations
        {
          _module.args = {
            inherit pkgs;
            inherit (parts) utils;
          };
        }
      ]
      ++ modules;
    }).config;

  # A standalone home-manager configuration (`homeManagerConfiguration`, as a machine's
  # flake calls it); `osConfig` as home-manager's NixOS module passes it.
  home =
    {
      modules,
      osConfig ? null,
      extraSpecialArgs ? { },
    }:
    (hmLib.homeManagerConfiguration {
      inherit pkgs modules;
      extraSpecialArgs = extraSpecialArgs // lib.optionalAttrs (osConfig != null) { inherit osConfig; };
    }).config;

  # A machine flake (what bootstrap-new-machine writes, or a template) as
  # `home-manager switch --flake` and a NixOS flake use it, with this repository's flake as
  # its `tailcache` input: its one home configuration and, if it has one, its NixOS module.
  machine =
    dir:
    let
      outputs = (import (dir + "/flake.nix")).outputs (
        flakeInputs
        // {
          self = outputs;
          tailcache = flake;
        }
      );
      names = builtins.attrNames outputs.homeConfigurations;
      name = builtins.head names;
      hm = outputs.homeConfigurations.${name};
    in
    assert builtins.length names == 1;
    {
      inherit name outputs;
      system = hm.pkgs.system;
      config = hm.config;
      nixosModule = outputs.nixosModules.default or null;
    };

  # What the tests assert on for a home-manager configuration. Files are their store paths,
  # where the stand-in wrote their text (tests/common/modules.rs reads them back).
  homeSummary =
    c:
    let
      files = lib.filterAttrs (_: f: f.enable) c.xdg.configFile;
    in
    {
      warnings = c.warnings;
      failedAssertions = failed c.assertions;
      nixConf = toString files."nix/nix.conf".source;
      nixSettings = c.nix.settings;
      configFiles = builtins.attrNames files;
      # Every user unit file, by name.
      units = lib.mapAttrs' (n: f: lib.nameValuePair (lib.removePrefix "systemd/user/" n) (toString f.source)) (
        lib.filterAttrs (
          n: _: lib.hasPrefix "systemd/user/" n && !(lib.hasInfix ".wants/" n) && !(lib.hasSuffix ".target" n)
        ) files
      );
      wants = builtins.filter (n: lib.hasInfix ".wants/" n) (builtins.attrNames files);
      tailcacheConfig = toString (files."tailcache/config.toml".source or "");
      atuin = c.programs.atuin.settings or null;
      atuinEnabled = c.programs.atuin.enable;
      packages = map (p: p.name) c.home.packages;
      homeManagerCli = c.programs.home-manager.enable;
    };

  # What the tests assert on for a NixOS configuration.
  nixosSummary = c: {
    warnings = c.warnings;
    failedAssertions = failed c.assertions;
    nixConf = c.environment.etc."nix/nix.conf".text;
    nixSettings = c.nix.settings;
    units = lib.mapAttrs (_: u: u.text) c.systemd.units;
    wantedBy = lib.mapAttrs (_: u: u.wantedBy) c.systemd.units;
    etc = lib.mapAttrs (_: e: toString e.source) (lib.filterAttrs (_: e: e.enable) c.environment.etc);
    packages = map (p: p.name) c.environment.systemPackages;
    users = lib.mapAttrs (_: u: { inherit (u) isSystemUser group home; }) c.users.users;
    groups = builtins.attrNames c.users.groups;
    firewall = {
      inherit (c.networking.firewall) allowedTCPPorts;
      interfaces = lib.mapAttrs (_: i: { inherit (i) allowedTCPPorts allowedUDPPorts; }) c.networking.firewall.interfaces;
    };
    tmpfiles = c.systemd.tmpfiles.rules;
    postgresql = c.services.postgresql.enable;
  };
}
