# The options a client machine's modules share — NixOS's `services.tailcache.client` and
# home-manager's `programs.tailcache`: where the build server is, which keys it signs with,
# the machine template, the agent, and the unit that follows the server (prefetch,
# autoSwitch). Each module adds what only it has (the home module's upstream caches and agent
# cache directory, the NixOS module's system units). `cfg` is the module's own configuration,
# where the template's defaults are read.
{
  lib,
  pkgs,
  cfg,
}:
let
  tlib = import ./lib.nix;
  inherit (lib) mkOption mkEnableOption types;
  templateAgent = tlib.templateAgent cfg.template;
in
{
  enable = mkEnableOption "the tailcache client (tailcache, bt, bs, bl) and the build server's binary cache";

  package = mkOption {
    type = types.package;
    default = tlib.defaultPackage pkgs;
    defaultText = tlib.defaultPackageText;
    description = "The tailcache package (tailcache, bt, bs, bl).";
  };

  server = mkOption {
    type = types.str;
    default = "http://build-server:8000";
    description = "The build API's URL (bt/bs/bl, tailcache switch and prefetch).";
  };

  cacheUrl = mkOption {
    type = types.str;
    default = "http://build-server:5000";
    description = "The binary cache's URL.";
  };

  publicKeys = mkOption {
    type = types.listOf types.str;
    default = [ ];
    example = [ "build-server-tailcache-1:Zm9v…" ];
    description = "Keys the cache signs with (GET /pubkey): trusted for its paths and for the generation records of tailcache switch.";
  };

  tokenFile = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "/home/me/nix-config/secrets/tailcache-token";
    description = "Absolute path to a (git-ignored) file holding the API token for bt; never copied into the store.";
  };

  negativeTtl = mkOption {
    type = types.ints.unsigned;
    default = tlib.defaultNegativeTtl;
    description = ''
      narinfo-cache-negative-ttl: seconds Nix remembers that a cache lacks a path. Nix's
      default (3600) would hide what the server builds for an hour from a machine that asked
      before the build finished.
    '';
  };

  template = mkOption {
    type = types.nullOr (types.enum tlib.templateNames);
    default = null;
    example = "laptop";
    description = ''
      The machine template this machine follows, whose agent settings are the defaults: a
      laptop fetches from peers without reseeding, a desktop reseeds, a server runs no agent
      (it is the cache). null: no agent unless enabled.
    '';
  };

  agent = {
    enable = mkOption {
      type = types.bool;
      default = templateAgent.enable;
      defaultText = "true for the laptop and desktop templates, else false";
      example = true;
      description = "Whether to enable the peer-assisted fetch agent (a local substituter listed first).";
    };
    bind = mkOption {
      type = types.str;
      default = "127.0.0.1:5001";
      description = "Where the agent's substituter listens (loopback).";
    };
    tracker = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/ip4/100.64.0.1/tcp/5002/p2p/12D3KooW…";
      description = "The server's tracker (printed by the server); null: every byte from the server.";
    };
    reseed = mkOption {
      type = types.bool;
      # A template's reseeding goes with its agent: none where the agent is off (on NixOS the
      # system's runs instead of the user's).
      default = cfg.agent.enable && templateAgent.reseed;
      defaultText = "true for the desktop template when agent.enable, else false";
      description = "Keep fetched files and upload them to other machines.";
    };
    metered = mkOption {
      type = types.bool;
      default = false;
      description = "Download from peers but never upload (e.g. on a phone hotspot).";
    };
    cacheMaxBytes = mkOption {
      type = types.ints.unsigned;
      default = 10737418240;
      description = "Upper bound of the files kept for reseeding.";
    };
    uploadRate = mkOption {
      type = types.ints.unsigned;
      default = 0;
      description = "Upload cap in bytes per second (0: none).";
    };
    listen = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [
        "/ip4/100.64.0.2/udp/0/quic-v1"
        "/ip4/100.64.0.2/tcp/0"
      ];
      description = "libp2p multiaddrs the agent listens on for peers; null: loopback only (the agent's default), so set the tailnet address for peers to reach it.";
    };
    encoding = mkOption {
      type = types.enum [
        "auto"
        "server"
        "none"
        "zstd"
        "xz"
      ];
      default = "auto";
      description = ''
        Which of a NAR's files the agent names to Nix: auto, the fastest end to end on this
        machine's link (measured goodput against measured decoding speed: the uncompressed NAR
        on a very fast link, the server's smaller archive file on a slow one); server, the
        server's narinfo as it is; or a pinned one (none, zstd, xz) when the server has it.
      '';
    };
  };

  prefetch = {
    enable = mkEnableOption ''
      following the build server: a service that polls this machine's target and, when a new
      generation is ready, substitutes its closure in the background at low priority (through
      the agent when it runs), so that `tailcache switch` has nothing left to download
    '';
    interval = mkOption {
      type = types.ints.positive;
      default = 60;
      description = "Seconds between two looks at the server (longer after failures, up to 15 minutes).";
    };
  };
}
