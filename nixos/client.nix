# NixOS module `services.tailcache.client`: a machine that takes what the build server built.
# The nix-daemon ignores a non-trusted user's substituters and keys, so this is where they
# belong: system-wide nix.settings (the local agent first when it runs, then the server; the
# server's keys; a short negative narinfo TTL, since the cache fills after each build), the
# agent as a hardened system service with its own user, state and cache directories,
# tailcache/bt/bs/bl with a system-wide /etc/tailcache/config.toml, and the unit that follows
# the server: prefetch (substitute each new ready generation of this host in the background,
# at idle priority) and autoSwitch (apply it: `tailcache switch`, the counterpart of
# system.autoUpgrade that never evaluates). The decisions live in ../nix/lib.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  tlib = import ../nix/lib.nix;
  shared = import ../nix/client-options.nix { inherit lib pkgs cfg; };
  cfg = config.services.tailcache.client;
  inherit (lib) mkOption types;
  toml = pkgs.formats.toml { };

  configFile = toml.generate "tailcache-client.toml" (tlib.clientConfig cfg);
  agentCacheDir = "/var/cache/tailcache-agent";
  agentConfig = toml.generate "tailcache-agent.toml" (
    tlib.agentConfig (cfg // { agent = cfg.agent // { cacheDir = agentCacheDir; }; })
  );
  follows = cfg.prefetch.enable || cfg.autoSwitch != null;
in
{
  options.services.tailcache.client = shared // {
    host = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = "config.networking.hostName";
      description = "The NixOS target this machine follows (GET /hosts/<host>): prefetch, autoSwitch.";
    };

    autoSwitch = mkOption {
      type = types.nullOr (
        types.enum [
          "boot"
          "switch"
        ]
      );
      default = null;
      description = ''
        Apply each new ready generation of `host` once it is substituted: "switch" activates
        it at once, "boot" makes it the default of the next boot (`tailcache switch --action`).
        The counterpart of system.autoUpgrade, applying what the server built instead of
        evaluating here; it verifies the record's signature and never goes back to an older
        generation. null: only prefetch (with prefetch.enable).
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = tlib.secretPathProblem "tokenFile" cfg.tokenFile == null;
            message = "services.tailcache.client: ${toString (tlib.secretPathProblem "tokenFile" cfg.tokenFile)}";
          }
          {
            assertion = cfg.publicKeys != [ ];
            message = "services.tailcache.client.publicKeys: the cache's key (GET /pubkey) is needed, or Nix refuses every path it serves";
          }
        ];

        environment.systemPackages = [ cfg.package ];
        # bt/bs/bl and tailcache switch read it when the user has no config of their own.
        environment.etc."tailcache/config.toml".source = configFile;

        nix.settings =
          let
            s = tlib.systemNixSettings {
              inherit (cfg)
                cacheUrl
                publicKeys
                agent
                negativeTtl
                ;
            };
          in
          {
            # Before cache.nixos.org, which NixOS lists itself.
            substituters = lib.mkBefore s.substituters;
            trusted-public-keys = s.trusted-public-keys;
            narinfo-cache-negative-ttl = s.narinfo-cache-negative-ttl;
          };
      }

      (lib.mkIf cfg.agent.enable {
        users.users.tailcache-agent = {
          isSystemUser = true;
          group = "tailcache-agent";
          home = "/var/lib/tailcache-agent";
          description = "tailcache agent";
        };
        users.groups.tailcache-agent = { };

        # Peers and the tracker are on the tailnet.
        systemd.services.tailcache-agent = tlib.tailnetService { } // {
          description = "tailcache agent: local substituter with peer-assisted fetches";
          environment.RUST_LOG = "info";
          serviceConfig = {
            ExecStart = lib.escapeShellArgs [
              "${cfg.package}/bin/tailcache"
              "agent"
              "--config"
              "${agentConfig}"
            ];
            User = "tailcache-agent";
            Group = "tailcache-agent";
            StateDirectory = "tailcache-agent";
            StateDirectoryMode = "0700";
            CacheDirectory = "tailcache-agent";
            CacheDirectoryMode = "0700";
            Restart = "on-failure";
            RestartSec = 5;
            UMask = "0077";
          }
          # The agent serves HTTP on loopback and talks to the server and peers (inet;
          # netlink: libp2p watches interface addresses).
          // tlib.serviceHardening;
        };
      })

      (lib.mkIf follows {
        # Runs as root: the substitution then happens in this process (root opens the store
        # itself), so the idle priorities below apply to the download too; an activation
        # needs root anyway.
        systemd.services.tailcache-prefetch =
          let
            agent = lib.optional cfg.agent.enable "tailcache-agent.service";
          in
          tlib.tailnetService {
            after = [ "nix-daemon.socket" ] ++ agent;
            wants = agent;
          }
          // {
            description = "tailcache prefetch: substitute each new generation of ${cfg.host} the build server makes ready";
            path = [ config.nix.package ];
            environment.RUST_LOG = "info";
            # An activation replaces this unit's own definition: never stop it midway.
            restartIfChanged = false;
            serviceConfig = {
              ExecStart = lib.escapeShellArgs (
                [ "${cfg.package}/bin/tailcache" ]
                ++ tlib.prefetchArgs {
                  configFile = "${configFile}";
                  inherit (cfg) host autoSwitch;
                  home = false;
                  inherit (cfg.prefetch) interval;
                }
              );
              StateDirectory = "tailcache-switch";
              StateDirectoryMode = "0700";
              PrivateTmp = true;
            }
            // tlib.followerService
            // lib.optionalAttrs (cfg.autoSwitch == null) {
              # Only substituting: no need to see the users' homes.
              ProtectHome = true;
            };
          };
      })
    ]
  );
}
