# The flake's checks: the package, the Nix library's tests, evaluation of the NixOS (server
# and client) and home-manager modules with the real module system and NixOS's own modules
# (the deep merge of template folders, the substituter order, credentials, firewall, the
# prefetch unit), and the NixOS VM test. tests/nix_modules.rs evaluates the same modules
# offline, without NixOS's modules. They need nixpkgs and
# home-manager (and KVM for the VM test): `nix flake check` on a host with Nix.
{
  pkgs,
  self,
  home-manager,
  nixpkgsLib,
}:
let
  lib = nixpkgsLib;

  # A derivation that exists only when every check holds; otherwise evaluation fails naming
  # the ones that do not.
  expect =
    name: checks:
    let
      failed = lib.filterAttrs (_: ok: !ok) checks;
    in
    if failed == { } then
      pkgs.runCommand name { } "echo ${toString (builtins.length (builtins.attrNames checks))} checks > $out"
    else
      throw "${name}: failed: ${lib.concatStringsSep ", " (builtins.attrNames failed)}";

  # The configuration of a container with `module` and `settings`.
  nixosWith =
    module: settings:
    (lib.nixosSystem {
      modules = [
        module
        settings
        {
          boot.isContainer = true;
          system.stateVersion = "25.05";
          nixpkgs.pkgs = pkgs;
        }
      ];
    }).config;

  nixos = nixosWith self.nixosModules.default {
    services.tailcache.server = {
      enable = true;
      cache.listen = "100.64.0.1:5000";
      api.listen = "100.64.0.1:8000";
      signingKeyFile = "/var/lib/secrets/tailcache-key";
      api.tokenFile = "/var/lib/secrets/tailcache-token";
      openFirewall = true;
      p2p.enable = true;
      p2p.listen = [
        "/ip4/100.64.0.1/udp/5002/quic-v1"
        "/ip4/100.64.0.1/tcp/5002"
      ];
      build = {
        repository = "https://example.invalid/config.git";
        schedule = "daily";
      };
    };
  };
  unit = nixos.systemd.services.tailcache-server;

  client = nixosWith self.nixosModules.client {
    networking.hostName = "laptop";
    services.tailcache.client = {
      enable = true;
      publicKeys = [ "build-server-1:AAAA" ];
      agent.enable = true;
      prefetch.enable = true;
      autoSwitch = "boot";
    };
  };
  prefetchUnit = client.systemd.services.tailcache-prefetch;

  home =
    (home-manager.lib.homeManagerConfiguration {
      inherit pkgs;
      modules = [
        self.homeModules.default
        {
          home.username = "alice";
          home.homeDirectory = "/home/alice";
          home.stateVersion = "25.05";
          programs.tailcache = {
            enable = true;
            server = "http://build-server:8000";
            cacheUrl = "http://build-server:5000";
            publicKeys = [ "build-server-1:AAAA" ];
            agent.enable = true;
            agent.reseed = true;
            atuin.enable = true;
          };
          services.bootstrap-services = {
            enable = true;
            template = "laptop";
            syncthing.devices.desktop.id = "DESKTOP-ID";
            folders.documents.path = "/data/documents";
          };
        }
      ];
    }).config;
  folders = home.services.syncthing.settings.folders;
in
{
  package = pkgs.tailcache;

  nix-lib = assert import ../tests/nix/lib-test.nix; pkgs.runCommand "tailcache-nix-lib" { } "touch $out";

  module-eval-nixos = expect "tailcache-module-eval-nixos" {
    key-is-a-credential = builtins.elem "signing-key:/var/lib/secrets/tailcache-key" unit.serviceConfig.LoadCredential;
    key-read-from-credentials-dir = lib.hasInfix "%d/signing-key" unit.serviceConfig.ExecStart;
    token-read-from-credentials-dir = lib.hasInfix "%d/api-token" unit.serviceConfig.ExecStart;
    firewall-tailscale0-tcp =
      nixos.networking.firewall.interfaces.tailscale0.allowedTCPPorts == [
        5000
        8000
        5002
      ];
    firewall-tailscale0-udp = nixos.networking.firewall.interfaces.tailscale0.allowedUDPPorts == [ 5002 ];
    firewall-not-global = !(builtins.elem 5000 nixos.networking.firewall.allowedTCPPorts);
    dedicated-user = unit.serviceConfig.User == "tailcache" && nixos.users.users.tailcache.isSystemUser;
    protect-system-strict = unit.serviceConfig.ProtectSystem == "strict";
    no-new-privileges = unit.serviceConfig.NoNewPrivileges;
    timer = nixos.systemd.timers.tailcache-server-trigger.timerConfig.OnCalendar == "daily";
    gc-weekly = nixos.nix.gc.automatic && nixos.nix.gc.dates == "weekly";
    optimise = nixos.nix.optimise.automatic;
    daemon-allows-user = builtins.elem "*" nixos.nix.settings.allowed-users;
  };

  module-eval-nixos-client = expect "tailcache-module-eval-nixos-client" {
    agent-first = lib.take 2 client.nix.settings.substituters == [
      "http://127.0.0.1:5001"
      "http://build-server:5000"
    ];
    key-trusted = builtins.elem "build-server-1:AAAA" client.nix.settings.trusted-public-keys;
    negative-ttl = client.nix.settings.narinfo-cache-negative-ttl == 60;
    agent-own-user = client.systemd.services.tailcache-agent.serviceConfig.User == "tailcache-agent";
    prefetch-idle = prefetchUnit.serviceConfig.IOSchedulingClass == "idle";
    prefetch-auto-switch = lib.hasSuffix "--host laptop --interval 60 --auto-switch boot" prefetchUnit.serviceConfig.ExecStart;
    config-in-etc = client.environment.etc ? "tailcache/config.toml";
    root-trusted = builtins.elem "root" client.nix.settings.trusted-users;
  };

  module-eval-home = expect "tailcache-module-eval-home" {
    # The override replaced the path and kept the template's devices (only known ones).
    documents-path-overridden = folders.documents.path == "/data/documents";
    documents-devices-kept = folders.documents.devices == [ "desktop" ];
    notes-from-template = folders.notes.path == "~/Notes";
    agent-first =
      home.nix.settings.substituters == [
        "http://127.0.0.1:5001"
        "http://build-server:5000"
        "https://cache.nixos.org"
      ];
    server-key-trusted = builtins.head home.nix.settings.trusted-public-keys == "build-server-1:AAAA";
    agent-service = home.systemd.user.services ? tailcache-agent;
    atuin-fuzzy = home.programs.atuin.settings.search_mode == "fuzzy";
    atuin-sync = home.programs.atuin.settings.auto_sync;
    tailscale-accept-routes = home.services.bootstrap-services.tailscale.acceptRoutes;
  };

  vm-substitute = import ../nixos/tests/substitute.nix {
    inherit pkgs;
    module = self.nixosModules.default;
  };
}
