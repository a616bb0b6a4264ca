# Assertions on nix/lib.nix, the modules' pure decisions, with builtins only:
#   nix-instantiate --eval --strict tests/nix/lib-test.nix   → true, or an error naming the
# failed cases with what was expected and what came out. tests/nix_modules.rs runs it.
let
  lib = import ../../nix/lib.nix;

  # Marks a value the way the module system's mkDefault does, to see what gets wrapped.
  mkDefault = v: {
    _type = "override";
    priority = 1000;
    content = v;
  };

  server = {
    stateDir = "/var/lib/tailcache";
    signingKeyFile = "/var/lib/secrets/key";
    cache = {
      listen = "100.64.0.1:5000";
      priority = 30;
      compression = "xz";
      archiveCompression = "zstd";
      archiveLevel = null;
      maxBytes = 1024;
    };
    api = {
      listen = "[::]:8000";
      tokenFile = null;
      allow = [
        "tag:ci"
        "local"
      ];
    };
    build = {
      repository = null;
      branch = "main";
      attribute = "default";
      hosts = null;
      targets = [ ];
      keepGenerations = 3;
      supersede = false;
      builders = null;
      nixArgs = [ ];
      webhookSecretFile = "/var/lib/secrets/hook";
    };
    notify = {
      url = null;
      format = "text";
      tokenFile = null;
    };
    p2p = {
      enable = true;
      listen = [
        "/ip4/100.64.0.1/udp/5002/quic-v1"
        "/ip4/100.64.0.1/tcp/5003"
      ];
    };
  };

  client = {
    server = "http://build-server:8000";
    cacheUrl = "http://build-server:5000";
    publicKeys = [ "build-server-1:AAAA" ];
    tokenFile = null;
    upstream = [
      {
        url = "https://cache.nixos.org";
        key = "cache.nixos.org-1:KEY";
      }
    ];
    agent = {
      enable = true;
      bind = "127.0.0.1:5001";
      tracker = null;
      reseed = true;
      metered = false;
      cacheDir = null;
      cacheMaxBytes = 100;
      uploadRate = 0;
      listen = null;
      encoding = "auto";
    };
  };

  laptopDefaults = lib.templateDefaults mkDefault "laptop";
  # The module system's result of the laptop template plus a machine's override of one field.
  merged = lib.mergeFolders lib.templates.laptop.folders {
    documents.path = "/data/documents";
    music = {
      path = "~/Music";
      devices = [ "desktop" ];
      type = "sendreceive";
    };
  };
  settings = lib.syncthingSettings {
    folders = {
      documents = {
        path = "/data/documents";
        devices = [
          "desktop"
          "server"
        ];
        type = "sendreceive";
      };
      off = {
        enable = false;
        path = "/x";
        devices = [ ];
        type = "sendreceive";
      };
    };
    devices.desktop = {
      id = "DESKTOP-ID";
      addresses = [ "dynamic" ];
    };
  };
  script = lib.systemUpdateScript {
    tailcache = "/nix/store/x-tailcache/bin/tailcache";
    systemArgs = lib.systemSwitchArgs client;
    nixos = true;
    homeManager = true;
    gcOlderThan = "30d";
  };
  # Position of the first occurrence of `needle` in `s` (or -1).
  indexOf =
    needle: s:
    let
      n = builtins.stringLength needle;
      go =
        i:
        if i + n > builtins.stringLength s then
          -1
        else if builtins.substring i n s == needle then
          i
        else
          go (i + 1);
    in
    go 0;

  cases = {
    # Deep merge: overriding documents.path keeps the template's documents.devices.
    override-keeps-siblings = {
      expr = merged.documents;
      expected = {
        path = "/data/documents";
        devices = [
          "desktop"
          "server"
        ];
        type = "sendreceive";
      };
    };
    other-folders-untouched = {
      expr = merged.notes.path;
      expected = "~/Notes";
    };
    new-folder-added = {
      expr = builtins.attrNames merged;
      expected = [
        "documents"
        "music"
        "notes"
      ];
    };
    # The template's values enter the module system as mkDefault, leaf by leaf, so that the
    # module system (attrsOf submodule) merges field by field rather than folder by folder.
    template-leaves-are-defaults = {
      expr = laptopDefaults.folders.documents.path;
      expected = mkDefault "~/Documents";
    };
    template-lists-are-leaves = {
      expr = laptopDefaults.folders.documents.devices;
      expected = mkDefault [
        "desktop"
        "server"
      ];
    };
    template-folders = {
      expr = builtins.mapAttrs (_: t: builtins.attrNames t.folders) lib.templates;
      expected = {
        laptop = [
          "documents"
          "notes"
        ];
        desktop = [
          "documents"
          "notes"
          "photos"
        ];
        server = [
          "backups"
          "documents"
          "notes"
          "photos"
        ];
      };
    };
    # The agent a template's machine runs: a laptop's fetches, a desktop's reseeds too, a
    # server has none (it is the cache), and no template means no agent.
    template-agents = {
      expr = map lib.templateAgent [
        null
        "laptop"
        "desktop"
        "server"
      ];
      expected = [
        {
          enable = false;
          reseed = false;
        }
        {
          enable = true;
          reseed = false;
        }
        {
          enable = true;
          reseed = true;
        }
        {
          enable = false;
          reseed = false;
        }
      ];
    };
    server-backups-receive-only = {
      expr = lib.templates.server.folders.backups.type;
      expected = "receiveonly";
    };
    # Syncthing: disabled folders dropped, devices without an id dropped, id defaults to name.
    syncthing-folders = {
      expr = settings.folders.documents;
      expected = {
        id = "documents";
        label = "documents";
        path = "/data/documents";
        type = "sendreceive";
        devices = [ "desktop" ];
      };
    };
    syncthing-disabled-folder = {
      expr = settings.folders ? off;
      expected = false;
    };
    syncthing-devices = {
      expr = settings.devices;
      expected.desktop = {
        id = "DESKTOP-ID";
        addresses = [ "dynamic" ];
      };
    };
    # nix.settings: agent first, then the server, then upstream; keys in the same order.
    substituters-agent-first = {
      expr = lib.nixSettings {
        inherit (client)
          cacheUrl
          publicKeys
          agent
          upstream
          ;
        negativeTtl = 60;
      };
      expected = {
        substituters = [
          "http://127.0.0.1:5001"
          "http://build-server:5000"
          "https://cache.nixos.org"
        ];
        trusted-public-keys = [
          "build-server-1:AAAA"
          "cache.nixos.org-1:KEY"
        ];
        require-sigs = true;
        narinfo-cache-negative-ttl = 60;
      };
    };
    # The system's (NixOS lists cache.nixos.org itself).
    system-substituters-agent-first = {
      expr = lib.systemNixSettings {
        inherit (client) cacheUrl publicKeys agent;
        negativeTtl = 30;
      };
      expected = {
        substituters = [
          "http://127.0.0.1:5001"
          "http://build-server:5000"
        ];
        trusted-public-keys = [ "build-server-1:AAAA" ];
        narinfo-cache-negative-ttl = 30;
      };
    };
    substituters-without-agent = {
      expr =
        (lib.nixSettings {
          inherit (client) cacheUrl publicKeys upstream;
          negativeTtl = 60;
          agent = client.agent // {
            enable = false;
          };
        }).substituters;
      expected = [
        "http://build-server:5000"
        "https://cache.nixos.org"
      ];
    };
    agent-config = {
      expr = lib.agentConfig client;
      expected.agent = {
        server = "http://build-server:5000";
        bind = "127.0.0.1:5001";
        trusted_keys = [ "build-server-1:AAAA" ];
        reseed = true;
        metered = false;
        cache_max_bytes = 100;
        upload_rate = 0;
        encoding = "auto";
      };
    };
    client-config-no-token = {
      expr = lib.clientConfig client;
      expected = {
        server = "http://build-server:8000";
        trusted_keys = [ "build-server-1:AAAA" ];
      };
    };
    # The server: secrets only as credentials, read from %d ($CREDENTIALS_DIRECTORY).
    server-credentials = {
      expr = lib.serverCredentials server;
      expected = [
        "signing-key:/var/lib/secrets/key"
        "webhook-secret:/var/lib/secrets/hook"
      ];
    };
    server-args = {
      expr = lib.serverArgs server "/nix/store/x-tailcache-server.toml";
      expected = [
        "serve"
        "--config"
        "/nix/store/x-tailcache-server.toml"
        "--secret-key-file"
        "%d/signing-key"
        "--webhook-secret-file"
        "%d/webhook-secret"
      ];
    };
    server-config-has-no-secret-paths = {
      expr = builtins.toJSON (lib.serverConfig server);
      expected = builtins.toJSON {
        state_dir = "/var/lib/tailcache";
        cache = {
          bind = "100.64.0.1:5000";
          priority = 30;
          compression = "xz";
          archive_compression = "zstd";
          nar_cache_max_bytes = 1024;
        };
        api = {
          bind = "[::]:8000";
          allow = [
            "tag:ci"
            "local"
          ];
        };
        build = {
          branch = "main";
          attribute = "default";
          targets = [ ];
          keep_generations = 3;
          supersede = false;
          nix_args = [ ];
          coalesce = true;
        };
        notify.format = "text";
        p2p = {
          enable = true;
          listen = server.p2p.listen;
        };
      };
    };
    firewall = {
      expr = lib.serverFirewall server;
      expected = {
        tcp = [
          5000
          8000
          5003
        ];
        udp = [ 5002 ];
      };
    };
    firewall-without-p2p = {
      expr = lib.serverFirewall (server // { p2p = server.p2p // { enable = false; }; });
      expected = {
        tcp = [
          5000
          8000
        ];
        udp = [ ];
      };
    };
    connect-url-wildcard-v6 = {
      expr = lib.connectUrl "[::]:8000";
      expected = "http://[::1]:8000";
    };
    connect-url-wildcard-v4 = {
      expr = lib.connectUrl "0.0.0.0:8000";
      expected = "http://127.0.0.1:8000";
    };
    connect-url-address = {
      expr = lib.connectUrl "100.64.0.1:8000";
      expected = "http://100.64.0.1:8000";
    };
    state-directory = {
      expr = [
        (lib.stateDirectoryName "/var/lib/tailcache")
        (lib.stateDirectoryName "/srv/tailcache")
      ];
      expected = [
        "tailcache"
        null
      ];
    };
    secret-paths = {
      expr = map (v: lib.secretPathProblem "k" v != null) [
        null
        "/var/lib/secrets/k"
        "relative/k"
        "/nix/store/abc-k"
        ./lib-test.nix
      ];
      expected = [
        false
        false
        true
        true
        true
      ];
    };
    daemon-access = {
      expr =
        map
          (a: lib.daemonAccessProblem { allowedUsers = a; user = "tailcache"; group = "tailcache"; } == null)
          [
            [ "*" ]
            [ "root" ]
            [ "@tailcache" ]
            [ "tailcache" ]
          ];
      expected = [
        true
        false
        true
        true
      ];
    };
    # The daemon honours a user's own substituters and keys when the user is trusted (by
    # name or by a group the user is in), or when the system lists them itself.
    daemon-honours-user = {
      expr =
        map
          (
            settings:
            lib.daemonHonoursUser {
              inherit settings;
              user = "alice";
              groups = [ "users" ];
              substituters = [ "http://build-server:5000" ];
              keys = [ "srv-1:AAAA" ];
            }
          )
          [
            { trusted-users = [ "root" ]; }
            { trusted-users = [ "alice" ]; }
            { trusted-users = [ "@users" ]; }
            { trusted-users = [ "@wheel" ]; }
            {
              trusted-users = [ "root" ];
              trusted-substituters = [ "http://build-server:5000" ];
              trusted-public-keys = [ "srv-1:AAAA" ];
            }
            {
              trusted-users = [ "root" ];
              trusted-substituters = [ "http://build-server:5000" ];
              trusted-public-keys = [ ];
            }
          ];
      expected = [
        false
        true
        true
        false
        true
        false
      ];
    };
    prefetch-args = {
      expr = [
        (lib.prefetchArgs {
          configFile = "/etc/c.toml";
          host = "laptop";
          home = false;
          interval = 60;
          autoSwitch = "boot";
        })
        (lib.prefetchArgs {
          configFile = "/etc/c.toml";
          host = null;
          home = true;
          interval = 5;
          autoSwitch = null;
        })
      ];
      expected = [
        [
          "prefetch"
          "--config"
          "/etc/c.toml"
          "--host"
          "laptop"
          "--interval"
          "60"
          "--auto-switch"
          "boot"
        ]
        [
          "prefetch"
          "--config"
          "/etc/c.toml"
          "--home"
          "--interval"
          "5"
        ]
      ];
    };
    listen-hosts = {
      expr = map lib.listenHost [
        "100.64.0.1:8000"
        "[fd7a:115c::1]:8000"
        "build-server:8000"
      ];
      expected = [
        "100.64.0.1"
        "fd7a:115c::1"
        "build-server"
      ];
    };
    self-hosted-atuin = {
      expr = map (server: lib.selfHostedAtuin { inherit server; port = 8888; }) [
        "http://build-server:8000"
        "https://100.64.0.1:8000/"
        "http://[fd7a::1]:8000"
      ];
      expected = [
        "http://build-server:8888"
        "http://100.64.0.1:8888"
        "http://[fd7a::1]:8888"
      ];
    };
    atuin = {
      expr = lib.atuinSettings {
        autoSync = true;
        syncAddress = "http://build-server:8888";
        syncFrequency = "5m";
        fuzzySearch = true;
        historyFilter = lib.defaultHistoryFilter;
      };
      expected = {
        auto_sync = true;
        sync_address = "http://build-server:8888";
        sync_frequency = "5m";
        search_mode = "fuzzy";
        history_filter = lib.defaultHistoryFilter;
        secrets_filter = true;
      };
    };
    tailscale-flags = {
      expr = lib.tailscaleUpFlags {
        hostname = null;
        acceptRoutes = true;
        ssh = false;
        exitNode = null;
        operator = "alice";
        extraUpFlags = [ "--advertise-tags=tag:laptop" ];
      };
      expected = [
        "--accept-routes=true"
        "--ssh=false"
        "--operator=alice"
        "--advertise-tags=tag:laptop"
      ];
    };
    # system-update: switch the system (as root), then home, then collect garbage; it never
    # updates a lock file, evaluates or builds.
    system-update-order = {
      expr =
        let
          s = indexOf "sudo '/nix/store/x-tailcache/bin/tailcache' switch" script;
          h = indexOf "'/nix/store/x-tailcache/bin/tailcache' switch --home" script;
          g = indexOf "nix-collect-garbage" script;
        in
        s >= 0 && s < h && h < g;
      expected = true;
    };
    system-update-home-host = {
      expr =
        indexOf "switch --home --host 'alice@laptop' \"$@\"" (
          lib.systemUpdateScript {
            tailcache = "tailcache";
            systemArgs = [ ];
            nixos = false;
            homeManager = true;
            gcOlderThan = "30d";
            homeHost = "alice@laptop";
          }
        ) > 0;
      expected = true;
    };
    system-update-never-builds = {
      expr = map (w: indexOf w script) [
        "flake update"
        "nixos-rebuild"
        "home-manager switch"
        "nix build"
      ];
      expected = [
        (-1)
        (-1)
        (-1)
        (-1)
      ];
    };
    # Root reads neither the user's config.toml nor its nix.conf: everything is spelled out.
    system-switch-args = {
      expr = lib.systemSwitchArgs client;
      expected = [
        "--server"
        "http://build-server:8000"
        "--trusted-key"
        "build-server-1:AAAA"
        "--nix-option"
        "extra-substituters"
        "http://127.0.0.1:5001 http://build-server:5000"
        "--nix-option"
        "extra-trusted-public-keys"
        "build-server-1:AAAA"
      ];
    };
  };

  failures = builtins.filter (n: cases.${n}.expr != cases.${n}.expected) (builtins.attrNames cases);
  explain =
    n:
    "${n}: expected ${builtins.toJSON cases.${n}.expected}, got ${builtins.toJSON cases.${n}.expr}";
in
if failures == [ ] then
  true
else
  throw ("nix/lib.nix: ${toString (builtins.length failures)} failed:\n" + builtins.concatStringsSep "\n" (map explain failures))
