# home-manager module `programs.tailcache`: bt/bs/bl and their config, the machine's
# nix.settings (the local agent first, then the build server's cache, each key trusted), the
# agent as a systemd user service, Atuin settings, and the `system-update` script (which runs
# `tailcache switch`: the machine takes what the server built, nothing is evaluated locally).
# The decisions live in ../nix/lib.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  tlib = import ../nix/lib.nix;
  cfg = config.programs.tailcache;
  inherit (lib) mkOption mkEnableOption types;
  toml = pkgs.formats.toml { };
in
{
  options.programs.tailcache = {
    enable = mkEnableOption "the tailcache client (bt, bs, bl) and the build server's binary cache";

    package = mkOption {
      type = types.package;
      default = pkgs.tailcache or (pkgs.callPackage ../nix/package.nix { });
      defaultText = "pkgs.tailcache (the flake's overlay), else the package built from this source";
      description = "The tailcache package (tailcache, bt, bs, bl).";
    };

    server = mkOption {
      type = types.str;
      default = "http://build-server:8000";
      description = "The build API's URL, for bt/bs/bl.";
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
      description = "Keys the cache signs with (GET /pubkey); the only ones trusted for it.";
    };

    tokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/home/me/nix-config/secrets/tailcache-token";
      description = "Absolute path to a (git-ignored) file holding the API token for bt; never copied into the store.";
    };

    upstream = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            url = mkOption { type = types.str; };
            key = mkOption { type = types.str; };
          };
        }
      );
      default = [
        {
          url = "https://cache.nixos.org";
          key = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
        }
      ];
      description = "Caches listed after the build server, with their keys.";
    };

    agent = {
      enable = mkEnableOption "the peer-assisted fetch agent (a local substituter listed first)";
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
        default = false;
        description = "Keep fetched files and upload them to other machines.";
      };
      metered = mkOption {
        type = types.bool;
        default = false;
        description = "Download from peers but never upload (e.g. on a phone hotspot).";
      };
      cacheDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Fetched files and the agent's key; null: $XDG_CACHE_HOME/tailcache-agent.";
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
    };

    atuin = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Configure Atuin shell history (programs.atuin).";
      };
      autoSync = mkOption {
        type = types.bool;
        default = true;
        description = "Sync history automatically.";
      };
      syncAddress = mkOption {
        type = types.str;
        default = "https://api.atuin.sh";
        example = "http://build-server:8888";
        description = "The Atuin sync server.";
      };
      syncFrequency = mkOption {
        type = types.str;
        default = "10m";
        description = "How often to sync.";
      };
      fuzzySearch = mkOption {
        type = types.bool;
        default = true;
        description = "Fuzzy search (else prefix search).";
      };
      historyFilter = mkOption {
        type = types.listOf types.str;
        default = tlib.defaultHistoryFilter;
        description = "Regular expressions of commands never recorded (secrets on the command line).";
      };
    };

    systemUpdate = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Install `system-update`: switch to what the build server built (`tailcache switch`), then collect garbage.";
      };
      nixos = mkOption {
        type = types.bool;
        default = false;
        description = "Also switch the NixOS system (as root, through sudo) to the server's generation of the target named after the hostname.";
      };
      gcOlderThan = mkOption {
        type = types.str;
        default = "30d";
        description = "Generations older than this are removed before collecting garbage.";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = tlib.secretPathProblem "programs.tailcache.tokenFile" cfg.tokenFile == null;
            message = toString (tlib.secretPathProblem "programs.tailcache.tokenFile" cfg.tokenFile);
          }
        ];

        home.packages = [
          cfg.package
        ]
        ++ lib.optional cfg.systemUpdate.enable (
          pkgs.writeShellScriptBin "system-update" (
            tlib.systemUpdateScript {
              inherit (cfg.systemUpdate) nixos gcOlderThan;
              tailcache = "${cfg.package}/bin/tailcache";
              systemArgs = tlib.systemSwitchArgs cfg;
              homeManager = true;
            }
          )
        );

        xdg.configFile."tailcache/config.toml".source = toml.generate "tailcache-client.toml" (
          tlib.clientConfig cfg
        );

        nix.package = lib.mkDefault pkgs.nix;
        nix.settings = tlib.nixSettings {
          inherit (cfg)
            cacheUrl
            publicKeys
            agent
            upstream
            ;
        };
      }

      (lib.mkIf cfg.agent.enable {
        systemd.user.services.tailcache-agent = {
          Unit = {
            Description = "tailcache agent: local substituter with peer-assisted fetches";
            After = [ "network-online.target" ];
          };
          Service = {
            ExecStart = lib.escapeShellArgs [
              "${cfg.package}/bin/tailcache"
              "agent"
              "--config"
              "${toml.generate "tailcache-agent.toml" (tlib.agentConfig cfg)}"
            ];
            Restart = "on-failure";
            RestartSec = 5;
            NoNewPrivileges = true;
          };
          Install.WantedBy = [ "default.target" ];
        };
      })

      (lib.mkIf cfg.atuin.enable {
        programs.atuin = {
          enable = true;
          settings = tlib.atuinSettings cfg.atuin;
        };
      })
    ]
  );
}
