# home-manager module `services.bootstrap-services`: Syncthing folders and Tailscale settings
# from a machine template (laptop, desktop, server) with per-machine overrides. Folders are
# `attrsOf submodule` and the template's values are mkDefault per field, so the module
# system merges deeply: setting folders.documents.path keeps folders.documents.devices.
# The template contents and the Syncthing/Tailscale settings come from ../nix/lib.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  tlib = import ../nix/lib.nix;
  cfg = config.services.bootstrap-services;
  inherit (lib) mkOption types;

  folderType = types.submodule (
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Sync this folder.";
        };
        id = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Syncthing folder id; null: the attribute name (${name}).";
        };
        path = mkOption {
          type = types.str;
          description = "Where the folder lives (~ is the home directory).";
        };
        devices = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Names (in syncthing.devices) of the machines the folder is shared with; names without a known id are skipped.";
        };
        type = mkOption {
          type = types.enum [
            "sendreceive"
            "sendonly"
            "receiveonly"
            "receiveencrypted"
          ];
          default = "sendreceive";
          description = "Syncthing folder type.";
        };
      };
    }
  );

  deviceType = types.submodule {
    options = {
      id = mkOption {
        type = types.str;
        description = "The device's Syncthing id (`syncthing --device-id` on that machine).";
      };
      addresses = mkOption {
        type = types.listOf types.str;
        default = [ "dynamic" ];
        example = [ "tcp://desktop.tailnet-name.ts.net:22000" ];
        description = "How to reach it.";
      };
    };
  };
in
{
  options.services.bootstrap-services = {
    enable = mkOption {
      type = types.bool;
      default = false;
      description = "Syncthing and Tailscale defaults for this machine.";
    };

    template = mkOption {
      type = types.nullOr (types.enum tlib.templateNames);
      default = null;
      description = "Machine template whose folders and Tailscale settings are the defaults (see README).";
    };

    folders = mkOption {
      type = types.attrsOf folderType;
      default = { };
      example = {
        documents.path = "/data/documents";
      };
      description = "Syncthing folders: the template's, merged field by field with this machine's.";
    };

    syncthing = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run Syncthing (services.syncthing) with these folders.";
      };
      devices = mkOption {
        type = types.attrsOf deviceType;
        default = { };
        description = "The other machines, by the names folders use.";
      };
    };

    tailscale = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Install the tailscale CLI and `tailscale-up` with this machine's flags (tailscaled itself is a system service: services.tailscale on NixOS).";
      };
      package = mkOption {
        type = types.package;
        default = pkgs.tailscale;
        defaultText = "pkgs.tailscale";
        description = "The tailscale package.";
      };
      hostname = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Name on the tailnet; null: the host name.";
      };
      acceptRoutes = mkOption {
        type = types.bool;
        default = true;
        description = "Accept subnet routes other machines advertise.";
      };
      ssh = mkOption {
        type = types.bool;
        default = false;
        description = "Run Tailscale SSH on this machine.";
      };
      exitNode = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Exit node to use.";
      };
      operator = mkOption {
        type = types.nullOr types.str;
        default = config.home.username;
        defaultText = "config.home.username";
        description = "User allowed to run `tailscale up` without sudo.";
      };
      extraUpFlags = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More `tailscale up` flags.";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      # The template's values, each at mkDefault priority: a machine's own definition of a
      # field wins over that field alone.
      (lib.mkIf (cfg.template != null) (
        let
          # mkIf still walks its content's attribute names when the condition is false,
          # so the lookup must not fail without a template.
          t =
            if cfg.template == null then
              {
                folders = { };
                tailscale = { };
              }
            else
              tlib.templateDefaults lib.mkDefault cfg.template;
        in
        {
          services.bootstrap-services = {
            inherit (t) folders;
            tailscale = t.tailscale;
          };
        }
      ))

      (lib.mkIf cfg.syncthing.enable {
        services.syncthing = {
          enable = true;
          settings = tlib.syncthingSettings {
            inherit (cfg) folders;
            devices = cfg.syncthing.devices;
          };
        };
      })

      (lib.mkIf cfg.tailscale.enable {
        home.packages = [
          cfg.tailscale.package
          (pkgs.writeShellScriptBin "tailscale-up" ''
            exec ${cfg.tailscale.package}/bin/tailscale up ${lib.escapeShellArgs (tlib.tailscaleUpFlags cfg.tailscale)} "$@"
          '')
        ];
      })
    ]
  );
}
