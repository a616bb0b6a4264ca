# The NixOS options that tailcache's NixOS modules (and home-manager's NixOS module) set or
# read, declared as NixOS declares them, with the real `lib`: nixpkgs' nixos/ tree is not
# available offline, so this one file stands in for the few modules concerned (users, nix.nix
# and nix-daemon, systemd units, firewall, environment.etc, assertions, services.atuin,
# services.postgresql). It also renders what NixOS would write, the way NixOS writes it:
# /etc/nix/nix.conf from nix.settings (nix.nix: the plain settings, then the extra-* ones) and
# each unit's text (nixos/lib/systemd-lib.nix: [Unit] from the dependency lists, [Service]
# with Environment= lines and serviceConfig, [Install] WantedBy=), under
# `systemd.units."<name>".text`.
#
# `release` picks the NixOS generation where it matters: before 24.11, `trusted-users`
# carried [ "root" ] as the option's default, which any definition replaces; since 24.11
# (nixpkgs#318635) NixOS defines it in `config`, and definitions add to it.
{
  lib,
  pkgs,
  release ? "26.05",
}:
let
  inherit (lib) mkOption types;

  trustedUsersIsDefault = lib.versionOlder release "24.11";

  # NixOS's unitOption: an atom or a list of atoms; lists concatenate, atoms must agree.
  atom = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    types.package
  ];
  unitOption = types.either atom (types.listOf atom);

  unitNames = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  # systemd-lib's attrsToSection: one `Key=value` line per value, lists repeated.
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  attrsToSection =
    as:
    lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (name: value: map (x: "${name}=${toOption x}\n") (lib.toList value)) as
      )
    );

  commonOptions = {
    enable = mkOption {
      type = types.bool;
      default = true;
    };
    description = mkOption {
      type = types.singleLineStr;
      default = "";
    };
    wantedBy = unitNames;
    requiredBy = unitNames;
    after = unitNames;
    before = unitNames;
    wants = unitNames;
    requires = unitNames;
    partOf = unitNames;
    bindsTo = unitNames;
    conflicts = unitNames;
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  unitSection =
    c:
    lib.filterAttrs (_: v: v != "") {
      Description = c.description;
      Requires = toString c.requires;
      Wants = toString c.wants;
      After = toString c.after;
      Before = toString c.before;
      BindsTo = toString c.bindsTo;
      PartOf = toString c.partOf;
      Conflicts = toString c.conflicts;
    }
    // c.unitConfig;

  unitText =
    c: body:
    "[Unit]\n"
    + attrsToSection (unitSection c)
    + "\n"
    + body
    + lib.optionalString (c.wantedBy != [ ]) "\n[Install]\nWantedBy=${lib.concatStringsSep " " c.wantedBy}\n";

  serviceType = types.submodule (
    { name, config, ... }:
    {
      options = commonOptions // {
        environment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
        };
        path = mkOption {
          type = types.listOf (types.either types.package types.str);
          default = [ ];
        };
        serviceConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        script = mkOption {
          type = types.lines;
          default = "";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
        };
        startAt = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = [ ];
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        text = mkOption {
          type = types.str;
          readOnly = true;
          description = "The unit file, as NixOS renders it.";
        };
      };
      config = {
        environment.PATH = lib.mkIf (config.path != [ ]) "${lib.makeBinPath config.path}";
        # NixOS's makeJobScript: a script becomes ExecStart, run with `set -e`.
        serviceConfig.ExecStart = lib.mkIf (config.script != "") (
          "${pkgs.writeShellScriptBin "${name}-start" "set -e\n\n${config.script}"}/bin/${name}-start"
        );
        serviceConfig.ExecStartPre = lib.mkIf (config.preStart != "") (
          "${pkgs.writeShellScriptBin "${name}-pre-start" "set -e\n\n${config.preStart}"}/bin/${name}-pre-start"
        );
        text = unitText config (
          "[Service]\n"
          + lib.concatMapStrings (
            n:
            lib.optionalString (
              config.environment.${n} != null
            ) "Environment=${builtins.toJSON "${n}=${config.environment.${n}}"}\n"
          ) (builtins.attrNames config.environment)
          + lib.optionalString (!config.restartIfChanged) "X-RestartIfChanged=false\n"
          + lib.optionalString (!config.stopIfChanged) "X-StopIfChanged=false\n"
          + attrsToSection config.serviceConfig
        );
      };
    }
  );

  timerType = types.submodule (
    { config, ... }:
    {
      options = commonOptions // {
        timerConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        text = mkOption {
          type = types.str;
          readOnly = true;
        };
      };
      config.text = unitText config ("[Timer]\n" + attrsToSection config.timerConfig);
    }
  );

  # nix.nix's semanticConfType: what nix.settings may hold besides its declared options.
  confAtom = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      types.package
    ]
  );
  settingsType = types.submodule {
    freeformType = types.attrsOf (types.either confAtom (types.listOf confAtom));
    options = {
      substituters = mkOption { type = types.listOf types.str; };
      trusted-substituters = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      trusted-public-keys = mkOption { type = types.listOf types.str; };
      require-sigs = mkOption {
        type = types.bool;
        default = true;
      };
      trusted-users = mkOption (
        {
          type = types.listOf types.str;
        }
        // lib.optionalAttrs trustedUsersIsDefault { default = [ "root" ]; }
      );
      allowed-users = mkOption {
        type = types.listOf types.str;
        default = [ "*" ];
      };
    };
  };

  # nix.nix's mkValueString and the order of its lines.
  nixConfValue =
    v:
    if v == null then
      ""
    else if builtins.isList v then
      toString v
    else if builtins.isBool v then
      lib.boolToString v
    else
      toString v;
  nixConfLines =
    settings:
    lib.concatStringsSep "\n" (
      lib.mapAttrsToList (k: v: "${lib.escape [ "=" ] k} = ${nixConfValue v}") settings
    );
  nixConf =
    cfg:
    let
      isExtra = k: lib.hasPrefix "extra-" k;
    in
    ''
      ${nixConfLines (lib.filterAttrs (k: _: !(isExtra k)) cfg.settings)}
      ${nixConfLines (lib.filterAttrs (k: _: isExtra k) cfg.settings)}
      ${cfg.extraOptions}
    '';

  userType = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
        };
        packages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
      };
    }
  );

  etcType = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption {
          type = types.str;
          default = name;
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        source = mkOption { type = types.path; };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
        user = mkOption {
          type = types.str;
          default = "+0";
        };
        group = mkOption {
          type = types.str;
          default = "+0";
        };
      };
      config.source = lib.mkIf (config.text != null) (
        lib.mkDefault (pkgs.writeText "etc-${baseNameOf name}" config.text)
      );
    }
  );

  firewallPorts = {
    allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
  };
in
{
  # nixos/modules/misc/assertions.nix (home-manager imports it from pkgs.path too).
  assertions = {
    options.assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    options.warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };
  };

  # nixos/modules/misc/meta.nix, as far as modules set it.
  meta = {
    options.meta = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
  };

  # Everything else, with what NixOS itself defines (nix.nix's trusted-users and
  # cache.nixos.org, the daemon's defaults) and the renderings.
  declarations =
    { config, ... }:
    {
      options = {
        system.stateVersion = mkOption {
          type = types.str;
          default = release;
        };
        networking.hostName = mkOption {
          type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
          default = "nixos";
        };
        networking.firewall = firewallPorts // {
          interfaces = mkOption {
            type = types.attrsOf (types.submodule { options = firewallPorts; });
            default = { };
          };
        };
        users.users = mkOption {
          type = types.attrsOf userType;
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                options = {
                  name = mkOption {
                    type = types.str;
                    default = name;
                  };
                  gid = mkOption {
                    type = types.nullOr types.int;
                    default = null;
                  };
                  members = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                  };
                };
              }
            )
          );
          default = { };
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        environment.pathsToLink = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environment.etc = mkOption {
          type = types.attrsOf etcType;
          default = { };
        };
        nix = {
          enable = mkOption {
            type = types.bool;
            default = true;
          };
          package = mkOption {
            type = types.package;
            default = pkgs.nix;
          };
          settings = mkOption {
            type = settingsType;
            default = { };
          };
          extraOptions = mkOption {
            type = types.lines;
            default = "";
          };
          distributedBuilds = mkOption {
            type = types.bool;
            default = false;
          };
          buildMachines = mkOption {
            type = types.listOf (
              types.submodule {
                options = {
                  hostName = mkOption { type = types.str; };
                  system = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                  };
                  systems = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                  };
                  sshUser = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                  };
                  sshKey = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                  };
                  maxJobs = mkOption {
                    type = types.int;
                    default = 1;
                  };
                  speedFactor = mkOption {
                    type = types.int;
                    default = 1;
                  };
                  supportedFeatures = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                  };
                  mandatoryFeatures = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                  };
                };
              }
            );
            default = [ ];
          };
          gc = {
            automatic = mkOption {
              type = types.bool;
              default = false;
            };
            dates = mkOption {
              type = types.either types.singleLineStr (types.listOf types.str);
              default = [ "03:15" ];
            };
            options = mkOption {
              type = types.singleLineStr;
              default = "";
            };
          };
          optimise = {
            automatic = mkOption {
              type = types.bool;
              default = false;
            };
            dates = mkOption {
              type = types.listOf types.str;
              default = [ "03:45" ];
            };
          };
        };
        systemd.services = mkOption {
          type = types.attrsOf serviceType;
          default = { };
        };
        systemd.timers = mkOption {
          type = types.attrsOf timerType;
          default = { };
        };
        # home-manager's NixOS module sets these when users activate in their own manager.
        systemd.user.services = mkOption {
          type = types.attrsOf serviceType;
          default = { };
        };
        system.userActivationScripts = mkOption {
          type = types.attrsOf types.unspecified;
          default = { };
        };
        systemd.tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        systemd.units = mkOption {
          type = types.attrsOf types.anything;
          readOnly = true;
          description = "Every unit's text, by file name, as NixOS renders it.";
        };
        services.tailscale.enable = mkOption {
          type = types.bool;
          default = false;
        };
        services.postgresql = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          package = mkOption {
            type = types.package;
            default = pkgs.postgresql;
          };
          ensureDatabases = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          ensureUsers = mkOption {
            type = types.listOf (types.attrsOf types.anything);
            default = [ ];
          };
        };
        # nixos/modules/services/misc/atuin.nix.
        services.atuin = {
          enable = lib.mkEnableOption "Atuin server for shell history sync";
          package = mkOption {
            type = types.package;
            default = pkgs.atuin;
          };
          openRegistration = mkOption {
            type = types.bool;
            default = false;
          };
          path = mkOption {
            type = types.str;
            default = "";
          };
          host = mkOption {
            type = types.str;
            default = "127.0.0.1";
          };
          port = mkOption {
            type = types.port;
            default = 8888;
          };
          openFirewall = mkOption {
            type = types.bool;
            default = false;
          };
          maxHistoryLength = mkOption {
            type = types.int;
            default = 8192;
          };
          database = {
            createLocally = mkOption {
              type = types.bool;
              default = true;
            };
            uri = mkOption {
              type = types.nullOr types.str;
              default = "postgresql:///atuin?host=/run/postgresql";
            };
          };
        };
      };

      config = lib.mkMerge [
        {
          # nix.nix and the daemon's module.
          nix.settings = {
            trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
            trusted-users = lib.mkIf (!trustedUsersIsDefault) [ "root" ];
          };
          environment.etc."nix/nix.conf".text = nixConf config.nix;
          systemd.units =
            lib.mapAttrs' (n: s: lib.nameValuePair "${n}.service" { inherit (s) text wantedBy; }) config.systemd.services
            // lib.mapAttrs' (n: t: lib.nameValuePair "${n}.timer" { inherit (t) text wantedBy; }) config.systemd.timers;
        }
        # The parts of atuin.nix that tailcache's server module builds on.
        (lib.mkIf config.services.atuin.enable {
          services.postgresql = lib.mkIf config.services.atuin.database.createLocally {
            enable = true;
            ensureDatabases = [ "atuin" ];
            ensureUsers = [
              {
                name = "atuin";
                ensureDBOwnership = true;
              }
            ];
          };
          systemd.services.atuin = {
            description = "atuin server";
            after = [ "network.target" ] ++ lib.optional config.services.atuin.database.createLocally "postgresql.service";
            wantedBy = [ "multi-user.target" ];
            serviceConfig = {
              ExecStart = "${config.services.atuin.package}/bin/atuin server start";
              DynamicUser = true;
              RuntimeDirectory = "atuin";
            };
            environment = {
              ATUIN_HOST = config.services.atuin.host;
              ATUIN_PORT = toString config.services.atuin.port;
              ATUIN_OPEN_REGISTRATION = lib.boolToString config.services.atuin.openRegistration;
              ATUIN_DB_URI = config.services.atuin.database.uri;
              ATUIN_PATH = config.services.atuin.path;
              ATUIN_CONFIG_DIR = "/run/atuin";
            };
          };
          networking.firewall.allowedTCPPorts = lib.mkIf config.services.atuin.openFirewall [
            config.services.atuin.port
          ];
        })
      ];
    };

  # NixOS's `utils` module argument, as far as home-manager's NixOS module uses it.
  utils = {
    escapeSystemdPath = s: lib.replaceStrings [ "/" "-" " " ] [ "-" "\\x2d" "\\x20" ] (lib.removePrefix "/" s);
  };
}
