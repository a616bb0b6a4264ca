# NixOS module `services.tailcache.server`: the build server and binary cache as a hardened
# systemd service under its own user, secrets passed with LoadCredential (never in the store),
# the firewall opened on tailscale0 only, a build timer, weekly GC and store optimisation, and
# optionally the Atuin sync server of the machines' shell history (registration closed after
# the first account).
# The decisions (TOML config, command line, credentials, ports) live in ../nix/lib.nix.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  tlib = import ../nix/lib.nix;
  cfg = config.services.tailcache.server;
  inherit (lib) mkOption mkEnableOption types;

  configFile = (pkgs.formats.toml { }).generate "tailcache-server.toml" (tlib.serverConfig cfg);
  stateDirectoryName = tlib.stateDirectoryName cfg.stateDir;
  ports = tlib.serverFirewall cfg;
  atuinGate = cfg.atuin.enable && cfg.atuin.registration == "first-user";
  atuinRegistrationFile = "/run/tailcache-atuin/registration";
  atuinGateScript = pkgs.writeShellScript "tailcache-atuin-registration" tlib.atuinRegistrationScript;
  atuinGatePath = [
    pkgs.util-linux
    config.services.postgresql.package
  ];
  secretFile =
    description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/secrets/tailcache/secret";
      description = ''
        ${description} An absolute path to a file outside the Nix store (e.g. git-ignored
        or provisioned on the host), handed to the service with systemd's LoadCredential;
        the value never enters the store.
      '';
    };
in
{
  options.services.tailcache.server = {
    enable = mkEnableOption "the tailcache build server and Nix binary cache";

    package = mkOption {
      type = types.package;
      default = tlib.defaultPackage pkgs;
      defaultText = tlib.defaultPackageText;
      description = "The tailcache package.";
    };

    user = mkOption {
      type = types.str;
      default = "tailcache";
      description = "Dedicated system user the server and its builds run as (created).";
    };

    group = mkOption {
      type = types.str;
      default = "tailcache";
      description = "Group of that user (created).";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/tailcache";
      description = "Generated signing key (when signingKeyFile is unset), compressed NARs, build status, logs and the checkout.";
    };

    signingKeyFile = secretFile "Secret key (Nix format) the cache signs with; unset: one is generated in stateDir on first start.";

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the cache, API (and tracker) ports on the tailscale0 interface only.";
    };

    trusted = mkOption {
      type = types.bool;
      default = false;
      description = "Add the server's user to nix.settings.trusted-users (only needed when build.nixArgs pass settings a normal user may not, e.g. extra substituters).";
    };

    keepStoreDbOpen = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run a root helper that holds /nix/var/nix/db/db.sqlite open read-only while the
        server runs. The server reads the WAL database as an unprivileged user, which SQLite
        allows only while its -shm file exists, and only a writer of /nix/var/nix/db may create
        it; Nix removes it whenever its last connection closes.
      '';
    };

    cache = {
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:5000";
        example = "100.64.0.1:5000";
        description = "Address of the binary cache listener: the tailnet address in production, never 0.0.0.0 by default.";
      };
      priority = mkOption {
        type = types.ints.unsigned;
        default = 30;
        description = "nix-cache-info Priority (cache.nixos.org uses 40).";
      };
      compression = mkOption {
        type = types.enum [
          "zstd"
          "xz"
          "none"
        ];
        default = "zstd";
        description = "Background compression of NARs: zstd is servable within seconds of a build and decoded at disk speed; xz is ~20% smaller but takes minutes of every core per GB to make and bounds the client's CPU.";
      };
      archiveCompression = mkOption {
        type = types.enum [
          "none"
          "xz"
          "zstd"
        ];
        default = "none";
        example = "xz";
        description = "A second, smaller file per NAR for slow links (archive_compression), made in the background at idle priority after the primary one; the narinfo keeps naming the primary file, agents may pick either. Must differ from compression; none: off.";
      };
      archiveLevel = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "Level of the archive files (archive_level); null: xz 6, zstd 19.";
      };
      maxBytes = mkOption {
        type = types.ints.unsigned;
        default = 21474836480;
        description = "Upper bound of the compressed-NAR directories, primary and archive files together (nar_cache_max_bytes).";
      };
    };

    api = {
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:8000";
        example = "100.64.0.1:8000";
        description = "Address of the build API listener.";
      };
      tokenFile = secretFile "Bearer token the POST routes require (and the build timer sends).";
      allow = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "user:alice@example.com"
          "tag:ci"
          "local"
        ];
        description = "Who may trigger and cancel builds, as tailscaled's whois names callers: user:<login>, node:<name>, tag:<tag>, and local (this machine: the build timer needs it). Empty: everyone with the token.";
      };
    };

    build = {
      repository = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://github.com/you/nixos-config.git";
        description = "Git URL or path of the configuration repository; unset: builds are not configured.";
      };
      branch = mkOption {
        type = types.str;
        default = "main";
        description = "Branch to build.";
      };
      attribute = mkOption {
        type = types.str;
        default = "default";
        example = "nixosConfigurations.desktop.config.system.build.toplevel";
        description = "Flake attribute to build.";
      };
      hosts = mkOption {
        type = types.nullOr (types.enum [ "auto" ]);
        default = null;
        description = ''
          "auto": build every nixosConfigurations.<name> (its toplevel) and
          homeConfigurations.<name> (its activation package) of the flake, from one commit
          and lock file in one nix build. Replaces attribute.
        '';
      };
      targets = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              name = mkOption {
                type = types.str;
                description = "The host's name (GET /hosts/<name>).";
              };
              attribute = mkOption {
                type = types.str;
                description = "Flake output attribute.";
              };
              kind = mkOption {
                type = types.enum [
                  "nixos"
                  "home"
                  "package"
                ];
                description = "How a client activates it.";
              };
            };
          }
        );
        default = [ ];
        example = [
          {
            name = "laptop";
            attribute = "nixosConfigurations.laptop.config.system.build.toplevel";
            kind = "nixos";
          }
        ];
        description = "The targets to build (instead of attribute, or hosts = \"auto\").";
      };
      keepGenerations = mkOption {
        type = types.ints.positive;
        default = 3;
        description = "Generations kept, and GC roots, per target (garbage collection never deletes them).";
      };
      supersede = mkOption {
        type = types.bool;
        default = false;
        description = "A trigger for a newer commit while a build runs cancels it and builds the new one.";
      };
      builders = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "ssh://builder aarch64-linux";
        description = "Nix builders for the build step (--option builders); on NixOS prefer buildMachines.";
      };
      buildMachines = mkOption {
        type = types.listOf (types.attrsOf types.anything);
        default = [ ];
        example = [
          {
            hostName = "arm-builder";
            system = "aarch64-linux";
            sshUser = "nixbuild";
            sshKey = "/var/lib/secrets/nixbuild-key";
            maxJobs = 4;
          }
        ];
        description = ''
          Remote builders (nix.buildMachines, with nix.distributedBuilds on): the nix-daemon
          hands them the derivations this machine cannot or should not build, e.g. an
          aarch64 host's system.
        '';
      };
      nixArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra arguments for every nix command of a build (flake update, eval, build).";
      };
      schedule = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "*-*-* 03:00:00";
        description = "systemd OnCalendar expression of a timer that triggers a build through the API; null: no timer.";
      };
      webhookSecretFile = secretFile "GitHub webhook secret; enables POST /build/webhook.";
    };

    notify = {
      url = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://ntfy.tailnet:8080/builds";
        description = "POST a summary of each finished build here (one line per host); http:// only.";
      };
      format = mkOption {
        type = types.enum [
          "text"
          "json"
        ];
        default = "text";
        description = "text: ntfy-compatible (Title, Tags and Priority headers); json: a JSON object.";
      };
      tokenFile = secretFile "Bearer token sent with notifications.";
    };

    p2p = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Run the P2P tracker/seed node that agents on clients use.";
      };
      listen = mkOption {
        type = types.listOf types.str;
        default = [
          "/ip4/127.0.0.1/udp/5002/quic-v1"
          "/ip4/127.0.0.1/tcp/5002"
        ];
        example = [
          "/ip4/100.64.0.1/udp/5002/quic-v1"
          "/ip4/100.64.0.1/tcp/5002"
        ];
        description = "libp2p multiaddrs of the tracker.";
      };
    };

    atuin = {
      enable = mkEnableOption ''
        an Atuin sync server for the machines' shell history (nixpkgs' services.atuin, with its
        PostgreSQL database), listening on the API's address (the tailnet's) at `port`;
        clients point at it with programs.tailcache.atuin.selfHosted
      '';
      port = mkOption {
        type = types.port;
        default = 8888;
        description = "The Atuin server's port (opened on tailscale0 with openFirewall).";
      };
      registration = mkOption {
        type = types.enum [
          "first-user"
          "open"
          "closed"
        ];
        default = "first-user";
        description = ''
          Who may register: "first-user" keeps registration open until the first account
          exists and closes it from then on (checked when the server starts and every minute;
          your other machines log in to that account); "open" or "closed" fix it.
        '';
      };
    };

    gc = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Collect garbage weekly (nix.gc); the kept generations of every target are GC roots and survive.";
      };
      dates = mkOption {
        type = types.str;
        default = "weekly";
        description = "When (systemd calendar).";
      };
      options = mkOption {
        type = types.str;
        default = "--delete-older-than 30d";
        description = "Arguments of nix-collect-garbage.";
      };
    };

    optimise = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Deduplicate the store weekly (nix.optimise).";
      };
      dates = mkOption {
        type = types.listOf types.str;
        default = [ "weekly" ];
        description = "When (systemd calendar).";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map
        (p: {
          assertion = p == null;
          message = "services.tailcache.server: ${toString p}";
        })
        [
          (tlib.secretPathProblem "signingKeyFile" cfg.signingKeyFile)
          (tlib.secretPathProblem "api.tokenFile" cfg.api.tokenFile)
          (tlib.secretPathProblem "build.webhookSecretFile" cfg.build.webhookSecretFile)
          (tlib.secretPathProblem "notify.tokenFile" cfg.notify.tokenFile)
          (tlib.daemonAccessProblem {
            allowedUsers = config.nix.settings.allowed-users;
            inherit (cfg) user group;
          })
        ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      inherit (cfg) group;
      home = cfg.stateDir;
      description = "tailcache build server";
    };
    users.groups.${cfg.group} = { };

    # The builds go through the nix-daemon as this user: it must be allowed to connect
    # (allowed-users defaults to "*"; a machine that narrows it must name the user or group).
    # Before NixOS 24.11, [ "root" ] was the option's default, which any definition replaces:
    # keep what the declaration defaults to (nothing since, when NixOS defines root itself).
    nix.settings.trusted-users = lib.mkIf cfg.trusted (
      ((options.nix.settings.type.getSubOptions [ ]).trusted-users.default or [ ]) ++ [ cfg.user ]
    );

    # Bigger builds than one machine: Nix's own distributed builds.
    nix.buildMachines = cfg.build.buildMachines;
    nix.distributedBuilds = lib.mkIf (cfg.build.buildMachines != [ ]) true;

    # The self-hosted Atuin server; see atuin.registration for how "first-user" works.
    services.atuin = lib.mkIf cfg.atuin.enable {
      enable = true;
      host = tlib.listenHost cfg.api.listen;
      inherit (cfg.atuin) port;
      openRegistration = cfg.atuin.registration == "open";
    };
    systemd.services.atuin = lib.mkIf atuinGate {
      # The gate writes the EnvironmentFile (read after ExecStartPre), which overrides the
      # unit's ATUIN_OPEN_REGISTRATION; `+` runs it as root, outside the dynamic user.
      path = atuinGatePath;
      serviceConfig = {
        ExecStartPre = [ "+${atuinGateScript} gate ${atuinRegistrationFile}" ];
        EnvironmentFile = [ "-${atuinRegistrationFile}" ];
      };
    };
    systemd.services.tailcache-atuin-registration = lib.mkIf atuinGate {
      description = "Close the Atuin server's registration once its first account exists";
      after = [ "atuin.service" ];
      path = atuinGatePath;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${atuinGateScript} close ${atuinRegistrationFile}";
      };
    };
    systemd.timers.tailcache-atuin-registration = lib.mkIf atuinGate {
      description = "Close the Atuin server's registration once its first account exists";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "1min";
        OnUnitActiveSec = "1min";
      };
    };

    nix.gc = lib.mkIf cfg.gc.enable {
      automatic = true;
      inherit (cfg.gc) dates options;
    };
    nix.optimise = lib.mkIf cfg.optimise.enable {
      automatic = true;
      inherit (cfg.optimise) dates;
    };

    networking.firewall.interfaces.tailscale0 = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = ports.tcp ++ lib.optional cfg.atuin.enable cfg.atuin.port;
      allowedUDPPorts = ports.udp;
    };

    systemd.tmpfiles.rules = lib.mkIf (stateDirectoryName == null) [
      "d ${cfg.stateDir} 0700 ${cfg.user} ${cfg.group} - -"
    ];

    # Listening on the tailnet address needs tailscaled up (a failed bind is retried).
    systemd.services.tailcache-server = tlib.tailnetService { after = [ "nix-daemon.socket" ]; } // {
      description = "tailcache build server and Nix binary cache";
      requires = lib.mkIf cfg.keepStoreDbOpen [ "tailcache-store-db.service" ];
      # The default pipeline runs git and nix; /bin/sh runs the fetch script.
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
      ];
      environment = {
        HOME = cfg.stateDir;
        XDG_CACHE_HOME = "%C/tailcache";
        RUST_LOG = "info";
      };
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([ "${cfg.package}/bin/tailcache" ] ++ tlib.serverArgs cfg configFile);
        LoadCredential = tlib.serverCredentials cfg;
        User = cfg.user;
        Group = cfg.group;
        StateDirectory = lib.mkIf (stateDirectoryName != null) stateDirectoryName;
        StateDirectoryMode = "0700";
        CacheDirectory = "tailcache";
        ReadWritePaths = lib.mkIf (stateDirectoryName == null) [ cfg.stateDir ];
        Restart = "on-failure";
        RestartSec = 5;
        KillSignal = "SIGTERM";
        # systemd's default, stated because it matters: when the server stops or dies, every
        # process of the unit goes with it, build steps and whatever they started included.
        KillMode = "control-group";
        TimeoutStopSec = 30;
        # systemd's soft limit is 1024 whatever the hard one; the server raises soft to hard
        # and derives its connection limits from it.
        LimitNOFILE = 65536;
        UMask = "0077";
      }
      # The server reads the store and talks to the nix-daemon (unix), listens, fetches with
      # git and runs libp2p (inet; netlink: libp2p watches interface addresses).
      // tlib.serviceHardening;
    };

    # See keepStoreDbOpen. sqlite3 opens the database read-only and waits; it can create
    # the -shm file (the directory is writable for root) but never writes the database.
    systemd.services.tailcache-store-db = lib.mkIf cfg.keepStoreDbOpen {
      description = "Hold the Nix store database open for tailcache";
      before = [ "tailcache-server.service" ];
      partOf = [ "tailcache-server.service" ];
      serviceConfig = {
        ExecStart = lib.escapeShellArgs [
          "${pkgs.sqlite}/bin/sqlite3"
          "-readonly"
          "/nix/var/nix/db/db.sqlite"
          "SELECT count(*) FROM sqlite_master;"
          ".shell exec ${pkgs.coreutils}/bin/sleep infinity"
        ];
        StandardInput = "null";
        StandardOutput = "null";
        Restart = "always";
        ReadWritePaths = [ "/nix/var/nix/db" ];
        PrivateDevices = true;
        PrivateNetwork = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        SystemCallArchitectures = "native";
      }
      // tlib.unitSandbox;
    };

    systemd.services.tailcache-server-trigger = lib.mkIf (cfg.build.schedule != null) {
      description = "Trigger a tailcache build";
      after = [ "tailcache-server.service" ];
      requires = [ "tailcache-server.service" ];
      script = ''
        if [ -n "''${CREDENTIALS_DIRECTORY:-}" ] && [ -r "$CREDENTIALS_DIRECTORY/api-token" ]; then
          TAILCACHE_TOKEN="$(cat "$CREDENTIALS_DIRECTORY/api-token")"
          export TAILCACHE_TOKEN
        fi
        exec ${cfg.package}/bin/tailcache trigger --server ${lib.escapeShellArg (tlib.connectUrl cfg.api.listen)}
      '';
      serviceConfig = {
        Type = "oneshot";
        User = cfg.user;
        Group = cfg.group;
        LoadCredential = lib.optional (cfg.api.tokenFile != null) "api-token:${cfg.api.tokenFile}";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
      }
      // tlib.unitSandbox;
    };

    systemd.timers.tailcache-server-trigger = lib.mkIf (cfg.build.schedule != null) {
      description = "Scheduled tailcache builds";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.build.schedule;
        Persistent = true;
      };
    };
  };
}
