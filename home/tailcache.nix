# home-manager module `programs.tailcache`: bt/bs/bl and their config, the user's
# nix.settings (the local agent first, then the build server's cache, each key trusted, a short
# negative narinfo TTL), the agent and the prefetch/autoSwitch follower of the home target as
# systemd user services, Atuin settings (Atuin's server or the build server's own), the
# home-manager CLI, and the `system-update` script (which runs `tailcache switch`: the machine
# takes what the server built, nothing is evaluated locally). Run as a NixOS module, it warns
# when the system's nix-daemon would ignore those settings (use nixosModules.client there).
# The options shared with the NixOS client are in ../nix/client-options.nix, the decisions in
# ../nix/lib.nix.
{
  config,
  lib,
  pkgs,
  # The NixOS configuration when home-manager runs as a NixOS module, else null.
  osConfig ? null,
  ...
}:
let
  tlib = import ../nix/lib.nix;
  shared = import ../nix/client-options.nix { inherit lib pkgs cfg; };
  cfg = config.programs.tailcache;
  inherit (lib) mkOption types;
  toml = pkgs.formats.toml { };
  configFile = toml.generate "tailcache-client.toml" (tlib.clientConfig cfg);
  substituters = tlib.ownSubstituters { inherit (cfg) cacheUrl agent; };

  # What the NixOS system (when home-manager runs as its module) says about this user.
  systemClient = if osConfig == null then null else osConfig.services.tailcache.client or null;
  systemHasClient = systemClient != null && systemClient.enable;
  osUser = if osConfig == null then { } else osConfig.users.users.${config.home.username} or { };
  daemonIgnoresUser =
    osConfig != null
    && !systemHasClient
    && !(tlib.daemonHonoursUser {
      settings = osConfig.nix.settings;
      user = config.home.username;
      groups = osUser.extraGroups or [ ] ++ lib.optional ((osUser.group or "") != "") osUser.group;
      inherit substituters;
      keys = cfg.publicKeys;
    });
in
{
  options.programs.tailcache = shared // {
    host = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "alice@laptop";
      description = "The home-manager target this user follows (prefetch, autoSwitch, system-update); null: $USER@hostname.";
    };

    autoSwitch = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Activate each new ready generation of the target as soon as the prefetch service has
        substituted it (`tailcache switch --home`): the counterpart of NixOS's
        system.autoUpgrade, applying what the server built instead of evaluating here.
      '';
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

    agent = shared.agent // {
      cacheDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Fetched files and the agent's key; null: $XDG_CACHE_HOME/tailcache-agent.";
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
      selfHosted = mkOption {
        type = types.bool;
        default = false;
        description = ''
          The build server runs the Atuin sync server (services.tailcache.server.atuin): sync
          with it, at the host of `server` and port `atuin.port`, instead of Atuin's public one.
        '';
      };
      port = mkOption {
        type = types.port;
        default = 8888;
        description = "The self-hosted Atuin server's port (services.tailcache.server.atuin.port).";
      };
      syncAddress = mkOption {
        type = types.str;
        default =
          if cfg.atuin.selfHosted then
            tlib.selfHostedAtuin {
              inherit (cfg) server;
              inherit (cfg.atuin) port;
            }
          else
            "https://api.atuin.sh";
        defaultText = "with selfHosted, http://<the build server's host>:<port>; else https://api.atuin.sh";
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

        warnings =
          lib.optional daemonIgnoresUser ''
            programs.tailcache: the Nix daemon of this NixOS system ignores the substituters and
            keys written to ~/.config/nix/nix.conf, because ${config.home.username} is not in its
            nix.settings.trusted-users (and they are not its trusted-substituters and keys), so
            nothing comes from the build server. Enable tailcache's NixOS client module on this
            machine (tailcache.nixosModules.client: services.tailcache.client), which configures
            the system's Nix.''
          ++ lib.optional (cfg.agent.enable && systemHasClient && systemClient.agent.enable) ''
            programs.tailcache.agent: the system already runs the agent
            (services.tailcache.client.agent); this user's would compete for ${cfg.agent.bind}.
            Disable one of them.'';

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
              homeHost = cfg.host;
            }
          )
        );

        # The flake this configuration comes from is applied with `home-manager switch` the
        # first time (and after changes to it): keep its CLI installed.
        programs.home-manager.enable = lib.mkDefault true;

        xdg.configFile."tailcache/config.toml".source = configFile;

        nix.package = lib.mkDefault pkgs.nix;
        nix.settings = tlib.nixSettings {
          inherit (cfg)
            cacheUrl
            publicKeys
            agent
            upstream
            negativeTtl
            ;
        };
      }

      (lib.mkIf cfg.agent.enable {
        # A user manager has no network-online.target to wait for; the agent retries the
        # server and peers by itself.
        systemd.user.services.tailcache-agent = {
          Unit.Description = "tailcache agent: local substituter with peer-assisted fetches";
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

      (lib.mkIf (cfg.prefetch.enable || cfg.autoSwitch) {
        # Follows this user's home-manager target; the substitution itself runs in the
        # nix-daemon, so the low priority only covers the polling and the activation.
        systemd.user.services.tailcache-prefetch = {
          Unit = {
            Description = "tailcache prefetch: substitute each new home-manager generation the build server makes ready";
            After = lib.optional cfg.agent.enable "tailcache-agent.service";
            Wants = lib.optional cfg.agent.enable "tailcache-agent.service";
          };
          Service = {
            ExecStart = lib.escapeShellArgs (
              [ "${cfg.package}/bin/tailcache" ]
              ++ tlib.prefetchArgs {
                configFile = "${configFile}";
                inherit (cfg) host;
                home = true;
                inherit (cfg.prefetch) interval;
                autoSwitch = if cfg.autoSwitch then "switch" else null;
              }
            );
            # A user manager's PATH has no Nix outside NixOS (a multi-user install keeps it in
            # /nix/var/nix/profiles/default/bin); the activation looks for nix-env there too.
            Environment = [ "PATH=${lib.makeBinPath [ config.nix.package ]}:/usr/bin:/bin" ];
          }
          // tlib.followerService;
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
