# The decisions of tailcache's NixOS and home-manager modules as pure functions that need only
# `builtins`: the server's TOML config, its command line and credentials, firewall ports, the
# client's nix.settings (substituter order, trusted keys), the agent's config, Atuin settings,
# the machine templates (Syncthing folders, Tailscale flags, the agent; the files of the
# flake's templates) and the system-update script.
# The modules call these; tests/nix/lib-test.nix checks them with `nix-instantiate --eval`.
let
  inherit (builtins)
    attrNames
    concatMap
    concatStringsSep
    filter
    head
    isAttrs
    isString
    listToAttrs
    mapAttrs
    match
    substring
    stringLength
    ;

  # Removes attributes whose value is null (TOML has no null), recursively.
  dropNulls =
    set:
    listToAttrs (
      concatMap (
        n:
        let
          v = set.${n};
        in
        if v == null then
          [ ]
        else
          [
            {
              name = n;
              value = if isAttrs v then dropNulls v else v;
            }
          ]
      ) (attrNames set)
    );

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  removePrefix =
    prefix: s:
    if hasPrefix prefix s then substring (stringLength prefix) (stringLength s) s else s;
  optional = cond: x: if cond then [ x ] else [ ];
  shellQuote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
in
rec {
  inherit dropNulls hasPrefix shellQuote;

  # The default of each module's `package`: the flake overlay's, else the same package built
  # from this source with the machine's nixpkgs.
  defaultPackage = pkgs: pkgs.tailcache or (pkgs.callPackage ./package.nix { });
  defaultPackageText = "pkgs.tailcache (the flake's overlay), else the package built from this source";

  # --- secrets -----------------------------------------------------------------------------

  # Why a secret file setting is unacceptable, or null. Secrets are passed as absolute path
  # strings to files outside the Nix store (git-ignored, or provisioned on the host); a Nix
  # path literal (./key) would be copied into the world-readable store.
  secretPathProblem =
    name: value:
    if value == null then
      null
    else if !(isString value) then
      "${name} must be a string path to a file outside the Nix store (a Nix path literal would be copied into the store)"
    else if !(hasPrefix "/" value) then
      "${name} must be an absolute path, got ${value}"
    else if hasPrefix "/nix/store/" value then
      "${name} points into the Nix store (${value}), where every user can read it"
    else
      null;

  # Why the nix-daemon would refuse the server's user, or null.
  daemonAccessProblem =
    {
      allowedUsers,
      user,
      group,
    }:
    if
      builtins.any (u: u == "*" || u == user || u == "@${group}") allowedUsers
    then
      null
    else
      "nix.settings.allowed-users must contain \"${user}\" or \"@${group}\" so that builds reach the nix-daemon";

  # --- addresses ---------------------------------------------------------------------------

  # The TCP port of "host:port" or "[v6]:port".
  portOf =
    addr:
    let
      m = match ".*:([0-9]+)" addr;
    in
    if m == null then throw "no port in listen address ${addr}" else builtins.fromJSON (head m);

  # How a local client reaches a listener: a wildcard bind is reached over loopback.
  connectUrl =
    bind:
    let
      m = match "(.*):([0-9]+)" bind;
      host = head m;
      port = builtins.elemAt m 1;
      reach =
        if host == "0.0.0.0" then
          "127.0.0.1"
        else if host == "[::]" then
          "[::1]"
        else
          host;
    in
    if m == null then throw "no port in listen address ${bind}" else "http://${reach}:${port}";

  # Ports of libp2p multiaddrs such as /ip4/100.64.0.1/udp/5002/quic-v1 and /ip4/…/tcp/5002.
  multiaddrPorts =
    addrs:
    let
      ports =
        proto:
        concatMap (
          a:
          let
            m = match ".*/${proto}/([0-9]+)(/.*)?" a;
          in
          if m == null then [ ] else [ (builtins.fromJSON (head m)) ]
        ) addrs;
    in
    {
      tcp = ports "tcp";
      udp = ports "udp";
    };

  # --- the server (services.tailcache.server) ----------------------------------------------

  # Credential ids under $CREDENTIALS_DIRECTORY for the secret files that are set.
  serverCredentials =
    cfg:
    optional (cfg.signingKeyFile != null) "signing-key:${cfg.signingKeyFile}"
    ++ optional (cfg.api.tokenFile != null) "api-token:${cfg.api.tokenFile}"
    ++ optional (cfg.build.webhookSecretFile != null) "webhook-secret:${cfg.build.webhookSecretFile}"
    ++ optional (cfg.notify.tokenFile != null) "notify-token:${cfg.notify.tokenFile}";

  # Arguments of `tailcache serve` after the program: the config file, and the secrets read
  # from the credentials directory (`%d` is systemd's specifier for $CREDENTIALS_DIRECTORY).
  serverArgs =
    cfg: configFile:
    [
      "serve"
      "--config"
      configFile
    ]
    ++ (if cfg.signingKeyFile != null then [ "--secret-key-file" "%d/signing-key" ] else [ ])
    ++ (if cfg.api.tokenFile != null then [ "--token-file" "%d/api-token" ] else [ ])
    ++ (
      if cfg.build.webhookSecretFile != null then
        [ "--webhook-secret-file" "%d/webhook-secret" ]
      else
        [ ]
    )
    ++ (if cfg.notify.tokenFile != null then [ "--notify-token-file" "%d/notify-token" ] else [ ]);

  # The server's TOML config (server/src/config.rs; unknown keys are an error there). Secrets are
  # not in it: they come from the command line (serverArgs), out of the credentials directory.
  serverConfig =
    cfg:
    dropNulls {
      state_dir = cfg.stateDir;
      cache = {
        inherit (cfg.cache) priority compression;
        bind = cfg.cache.listen;
        archive_compression = cfg.cache.archiveCompression;
        archive_level = cfg.cache.archiveLevel;
        nar_cache_max_bytes = cfg.cache.maxBytes;
      };
      api = {
        inherit (cfg.api) allow;
        bind = cfg.api.listen;
      };
      build = {
        inherit (cfg.build)
          repository
          branch
          hosts
          targets
          supersede
          builders
          ;
        # The one-target shorthand, left out when targets are listed or discovered.
        attribute =
          if cfg.build.hosts == null && cfg.build.targets == [ ] then cfg.build.attribute else null;
        keep_generations = cfg.build.keepGenerations;
        nix_args = cfg.build.nixArgs;
        coalesce = true;
      };
      notify = {
        inherit (cfg.notify) url format;
      };
      p2p = {
        inherit (cfg.p2p) enable listen;
      };
    };

  # Ports to open on tailscale0: the two listeners, and the tracker's when it runs.
  serverFirewall =
    cfg:
    let
      p2p =
        if cfg.p2p.enable then
          multiaddrPorts cfg.p2p.listen
        else
          {
            tcp = [ ];
            udp = [ ];
          };
    in
    {
      tcp = [
        (portOf cfg.cache.listen)
        (portOf cfg.api.listen)
      ]
      ++ p2p.tcp;
      udp = p2p.udp;
    };

  # What every unit of tailcache's gets, the short-lived helpers too: no new privileges and
  # no capabilities, a read-only system, no homes, a /tmp of its own.
  unitSandbox = {
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
  };

  # The hardening of tailcache's long-running units (the server, the agent): the sandbox,
  # nothing of the kernel, the network families libp2p and the nix-daemon need, and the
  # system-service syscalls.
  serviceHardening = unitSandbox // {
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    AmbientCapabilities = "";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
  };

  # How the unit that follows the server (prefetch, autoSwitch) runs, as a system or a user
  # service: again 30 s after it ends, whatever the reason, at idle CPU and I/O priority.
  followerService = {
    Restart = "always";
    RestartSec = 30;
    Nice = 19;
    IOSchedulingClass = "idle";
    CPUSchedulingPolicy = "idle";
  };

  # When a system service of tailcache's that works over the tailnet (the server, the agent,
  # the prefetch unit) starts: at boot, once the network is online and tailscaled runs (a
  # tailnet address to listen on, the server and peers to reach), and after `after`.
  tailnetService =
    {
      after ? [ ],
      wants ? [ ],
    }:
    {
      wantedBy = [ "multi-user.target" ];
      after = [
        "network-online.target"
        "tailscaled.service"
      ]
      ++ after;
      wants = [ "network-online.target" ] ++ wants;
    };

  # systemd's StateDirectory= for a state directory under /var/lib, else null (the module
  # then creates it with tmpfiles and allows writing there).
  stateDirectoryName =
    dir: if hasPrefix "/var/lib/" dir then removePrefix "/var/lib/" dir else null;

  # --- the client (programs.tailcache) -----------------------------------------------------

  # The build server's substituters: the local agent first when it runs (it passes the
  # server's narinfos through and fetches NARs from peers), then the server's cache.
  ownSubstituters = { cacheUrl, agent }: optional agent.enable "http://${agent.bind}" ++ [ cacheUrl ];

  # How long (seconds) Nix remembers that a cache lacks a path. Nix's default, an hour, suits
  # a cache whose contents never change; the build server's fills after every build, so a
  # machine that asked before the build finished must look again within a minute.
  defaultNegativeTtl = 60;

  # nix.settings of a client (home-manager, the user's nix.conf): the local agent first (when
  # enabled), then the server, then the upstream caches; the server's keys and the upstream
  # keys are trusted, nothing else.
  nixSettings =
    {
      cacheUrl,
      publicKeys,
      agent,
      upstream,
      negativeTtl,
    }:
    {
      substituters = ownSubstituters { inherit cacheUrl agent; } ++ map (u: u.url) upstream;
      trusted-public-keys = publicKeys ++ map (u: u.key) upstream;
      require-sigs = true;
      narinfo-cache-negative-ttl = negativeTtl;
    };

  # What the NixOS client adds to the system's nix.settings (NixOS lists cache.nixos.org and
  # its key itself, after these).
  systemNixSettings =
    {
      cacheUrl,
      publicKeys,
      agent,
      negativeTtl,
    }:
    {
      substituters = ownSubstituters { inherit cacheUrl agent; };
      trusted-public-keys = publicKeys;
      narinfo-cache-negative-ttl = negativeTtl;
    };

  # Whether the nix-daemon of a system with `settings` (its nix.settings) honours the
  # substituters and keys in a user's own nix.conf: for a trusted user (by name or group),
  # else only substituters it lists itself or as trusted-substituters, signed by keys it
  # trusts itself.
  daemonHonoursUser =
    {
      settings,
      user,
      groups,
      substituters,
      keys,
    }:
    let
      trusted = settings.trusted-users or [ "root" ];
      allowed = (settings.substituters or [ ]) ++ (settings.trusted-substituters or [ ]);
      systemKeys = settings.trusted-public-keys or [ ];
    in
    builtins.any (t: t == user || builtins.elem t (map (g: "@${g}") groups)) trusted
    || (
      builtins.all (s: builtins.elem s allowed) substituters
      && builtins.all (k: builtins.elem k systemKeys) keys
    );

  # `tailcache prefetch` for the unit that follows the server: substitute each new ready
  # generation of the target in the background, and apply it with `autoSwitch`
  # (`--auto-switch`, an activation of `tailcache switch`).
  prefetchArgs =
    {
      configFile,
      host,
      home,
      interval,
      autoSwitch,
    }:
    [
      "prefetch"
      "--config"
      configFile
    ]
    ++ (
      if host != null then
        [
          "--host"
          host
        ]
      else
        [ ]
    )
    ++ optional home "--home"
    ++ [
      "--interval"
      (toString interval)
    ]
    ++ (
      if autoSwitch != null then
        [
          "--auto-switch"
          autoSwitch
        ]
      else
        [ ]
    );

  # The host of a listen address ("100.64.0.1:5000" → "100.64.0.1", "[::1]:5000" → "::1").
  listenHost =
    addr:
    let
      m = match "\\[?([^]]*[^]:]|[^:]*)]?:[0-9]+" addr;
    in
    if m == null then throw "no host:port in listen address ${addr}" else head m;

  # The sync address of the Atuin server that services.tailcache.server.atuin runs: the build
  # server's host (from its API URL), Atuin's port.
  selfHostedAtuin =
    { server, port }:
    let
      m = match "https?://(\\[[^]]*]|[^:/]+).*" server;
    in
    if m == null then throw "no host in ${server}" else "http://${head m}:${toString port}";

  # The gate of the self-hosted Atuin server's registration: open until the first account
  # exists. `gate FILE` (the unit's ExecStartPre, as root) writes FILE, the unit's
  # EnvironmentFile, whose ATUIN_OPEN_REGISTRATION overrides the unit's; `close FILE` (a
  # timer) restarts the server once an account exists while registration is open, so the gate
  # closes it. The accounts are counted in Atuin's database as the postgres superuser; a
  # database without the table yet (before the server's first start) counts as none.
  atuinRegistrationScript = ''
    set -eu
    mode="$1"
    file="$2"
    accounts() {
      n=$(runuser -u postgres -- psql -d atuin -tAc 'SELECT count(*) FROM users' 2>/dev/null) || n=0
      n=$(printf '%s' "$n" | tr -cd '0-9')
      echo "''${n:-0}"
    }
    case "$mode" in
      gate)
        mkdir -p "$(dirname "$file")"
        if [ "$(accounts)" -gt 0 ]; then open=false; else open=true; fi
        echo "ATUIN_OPEN_REGISTRATION=$open" > "$file.tmp"
        mv "$file.tmp" "$file"
        echo "atuin registration open: $open"
        ;;
      close)
        if grep -qx 'ATUIN_OPEN_REGISTRATION=true' "$file" 2>/dev/null && [ "$(accounts)" -gt 0 ]; then
          echo "atuin has its first account: closing registration"
          systemctl restart atuin.service
        fi
        ;;
      *)
        echo "usage: $0 gate|close FILE" >&2
        exit 2
        ;;
    esac
  '';

  # `tailcache agent --config` file (the [agent] section of p2p/agent/src/config.rs).
  agentConfig =
    cfg:
    dropNulls {
      agent = {
        inherit (cfg.agent)
          tracker
          bind
          reseed
          metered
          listen
          ;
        server = cfg.cacheUrl;
        trusted_keys = cfg.publicKeys;
        cache_dir = cfg.agent.cacheDir;
        cache_max_bytes = cfg.agent.cacheMaxBytes;
        upload_rate = cfg.agent.uploadRate;
        encoding = cfg.agent.encoding;
      };
    };

  # ~/.config/tailcache/config.toml for bt/bs/bl and `tailcache switch` (cli/src/config.rs):
  # the cache's keys are the ones a generation record must be signed by.
  clientConfig =
    cfg:
    dropNulls {
      server = cfg.server;
      token_file = cfg.tokenFile;
      trusted_keys = cfg.publicKeys;
    };

  # Command lines that look like they carry a secret; Atuin never records them.
  defaultHistoryFilter = [
    "(?i)(password|passwd|secret|token|api[_-]?key)[a-z_]*="
    "(?i)authorization: *(bearer|basic)"
    "(?i)--(password|token|secret)[ =]"
    "^ "
  ];

  # programs.atuin.settings.
  atuinSettings = a: {
    auto_sync = a.autoSync;
    sync_address = a.syncAddress;
    sync_frequency = a.syncFrequency;
    search_mode = if a.fuzzySearch then "fuzzy" else "prefix";
    history_filter = a.historyFilter;
    secrets_filter = true;
  };

  # --- machines (services.bootstrap-services) ----------------------------------------------

  templateNames = [
    "laptop"
    "desktop"
    "server"
  ];

  # What each machine template sets; every value is a default a machine may override field
  # by field. Device names refer to services.bootstrap-services.syncthing.devices; `agent` is
  # the client modules' (templateAgent), the rest services.bootstrap-services'.
  templates =
    let
      folder = path: devices: {
        inherit path devices;
        type = "sendreceive";
      };
    in
    {
      # Carried around: documents and notes, synced with the desktop and the always-on server;
      # the agent fetches from peers but does not reseed (battery, hotel wifi).
      laptop = {
        agent = {
          enable = true;
          reseed = false;
        };
        folders = {
          documents = folder "~/Documents" [
            "desktop"
            "server"
          ];
          notes = folder "~/Notes" [
            "desktop"
            "server"
          ];
        };
        tailscale = {
          acceptRoutes = true;
          ssh = false;
        };
      };
      # At home: also the photo library; reachable over Tailscale SSH; the agent reseeds.
      desktop = {
        agent = {
          enable = true;
          reseed = true;
        };
        folders = {
          documents = folder "~/Documents" [
            "laptop"
            "server"
          ];
          notes = folder "~/Notes" [
            "laptop"
            "server"
          ];
          photos = folder "~/Pictures" [ "server" ];
        };
        tailscale = {
          acceptRoutes = true;
          ssh = true;
        };
      };
      # Always on: the hub every folder meets at, plus a receive-only backup of the others. No
      # agent: this machine is the cache.
      server = {
        agent = {
          enable = false;
          reseed = false;
        };
        folders = {
          documents = folder "~/sync/documents" [
            "laptop"
            "desktop"
          ];
          notes = folder "~/sync/notes" [
            "laptop"
            "desktop"
          ];
          photos = folder "~/sync/photos" [ "desktop" ];
          backups = (folder "~/sync/backups" [
            "laptop"
            "desktop"
          ]) // {
            type = "receiveonly";
          };
        };
        tailscale = {
          acceptRoutes = false;
          ssh = true;
        };
      };
    };

  # The agent of a client following `template` (null: none), the defaults of the client
  # modules' agent.enable and agent.reseed.
  templateAgent =
    template:
    if template == null then
      {
        enable = false;
        reseed = false;
      }
    else
      templates.${template}.agent;

  # The flake template `name` (`nix flake init -t tailcache#<name>`): the per-machine flake in
  # `dir`, which holds the files every template shares and one `<template>.nix` per template
  # (the machine's home.nix imports the one beside it), with only this template's own.
  # `nix flake init` copies a template's files as they are, and a symbolic link would point
  # nowhere in the new directory, so each template is a filtered copy of the one directory.
  templateSource =
    dir: name:
    builtins.path {
      name = "tailcache-template-${name}";
      path = dir;
      filter =
        path: _type:
        let
          file = baseNameOf path;
        in
        file == "${name}.nix" || !(builtins.elem file (map (t: "${t}.nix") templateNames));
    };

  # A template's settings with every leaf wrapped by `mkDefault`, so that the module system
  # merges a machine's own definitions field by field: setting folders.documents.path keeps
  # the template's folders.documents.devices.
  templateDefaults =
    mkDefault: name:
    let
      t = templates.${name} or (throw "unknown template ${name}; one of ${concatStringsSep ", " templateNames}");
      wrap = v: if isAttrs v then mapAttrs (_: wrap) v else mkDefault v;
    in
    wrap t;

  # What the module system yields from template defaults plus a machine's overrides (the
  # priorities of templateDefaults spelled out): per folder, per field, the override wins.
  mergeFolders =
    defaults: overrides:
    let
      names = attrNames (defaults // overrides);
    in
    listToAttrs (
      map (n: {
        name = n;
        value = (defaults.${n} or { }) // (overrides.${n} or { });
      }) names
    );

  # services.syncthing.settings: enabled folders, each shared only with devices whose id is
  # known (a template names devices before their ids are).
  syncthingSettings =
    { folders, devices }:
    {
      devices = mapAttrs (_: d: {
        inherit (d) id addresses;
      }) devices;
      folders = listToAttrs (
        concatMap (
          n:
          let
            f = folders.${n};
          in
          if !(f.enable or true) then
            [ ]
          else
            [
              {
                name = n;
                value = {
                  id = if (f.id or null) == null then n else f.id;
                  label = n;
                  inherit (f) path type;
                  devices = filter (d: devices ? ${d}) f.devices;
                };
              }
            ]
        ) (attrNames folders)
      );
    };

  # `tailscale up` flags for a machine.
  tailscaleUpFlags =
    t:
    optional (t.hostname != null) "--hostname=${t.hostname}"
    ++ [ "--accept-routes=${if t.acceptRoutes then "true" else "false"}" ]
    ++ [ "--ssh=${if t.ssh then "true" else "false"}" ]
    ++ optional (t.exitNode != null) "--exit-node=${t.exitNode}"
    ++ optional (t.operator != null) "--operator=${t.operator}"
    ++ t.extraUpFlags;

  # Root's `tailcache switch` of the system in system-update: root reads neither this user's
  # config.toml nor its nix.conf, so the server, the keys the record and the paths must be
  # signed by, and the substituters (the local agent first when it runs) are spelled out.
  systemSwitchArgs =
    cfg:
    [
      "--server"
      cfg.server
    ]
    ++ concatMap (k: [
      "--trusted-key"
      k
    ]) cfg.publicKeys
    ++ [
      "--nix-option"
      "extra-substituters"
      (concatStringsSep " " (ownSubstituters {
        inherit (cfg) cacheUrl agent;
      }))
      "--nix-option"
      "extra-trusted-public-keys"
      (concatStringsSep " " cfg.publicKeys)
    ];

  # The body of `system-update`: switch this machine to exactly what the build server built
  # for it — `tailcache switch` of the system (as root, when `nixos`), then of this user's
  # home-manager target ($USER@hostname) — then collect garbage. Nothing is evaluated or
  # built here, so the machine gets the server's closures even when a local lock file would
  # name other inputs. Its arguments go to each switch (`system-update --dry-run` shows what
  # would change, and then collects no garbage either).
  systemUpdateScript =
    {
      tailcache,
      systemArgs,
      nixos,
      homeManager,
      gcOlderThan,
      # The home target, when it is not $USER@hostname.
      homeHost ? null,
    }:
    concatStringsSep "\n" (
      [
        "set -euo pipefail"
        "dry=0"
        "for a in \"$@\"; do case \"$a\" in -n|--dry-run) dry=1 ;; esac; done"
        "echo 'system-update: switching to what the build server built'"
      ]
      ++ optional nixos "sudo ${shellQuote tailcache} switch ${
        concatStringsSep " " (map shellQuote systemArgs)
      } \"$@\""
      ++ optional homeManager "${shellQuote tailcache} switch --home${
        if homeHost == null then "" else " --host ${shellQuote homeHost}"
      } \"$@\""
      ++ [
        "if [ \"$dry\" = 0 ]; then"
        "  nix-collect-garbage --delete-older-than ${shellQuote gcOlderThan}"
      ]
      ++ optional nixos "  sudo nix-collect-garbage --delete-older-than ${shellQuote gcOlderThan}"
      ++ [
        "fi"
        "echo 'system-update: done'"
      ]
    )
    + "\n";
}
