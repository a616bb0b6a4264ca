# This machine's home configuration. Its template (laptop, desktop or server: the Syncthing
# folders, the Tailscale flags, the agent) is the one of laptop.nix, desktop.nix and
# server.nix beside this file. Any template value can be overridden field by field below; the
# rest of the field's folder is kept (setting folders.documents.path keeps
# folders.documents.devices).
{
  tailcache,
  user,
  homeDirectory,
  ...
}:
let
  secrets = import ./secrets.nix;
  # `nix flake init -t tailcache#<template>` (or bootstrap-new-machine --template) wrote one.
  templateFiles = builtins.filter builtins.pathExists [
    ./laptop.nix
    ./desktop.nix
    ./server.nix
  ];
in
{
  imports = [ tailcache.homeModules.default ] ++ templateFiles;
  assertions = [
    {
      assertion = templateFiles != [ ];
      message = "home.nix: the template's file (laptop.nix, desktop.nix or server.nix) is missing";
    }
  ];

  home.username = user;
  home.homeDirectory = homeDirectory;
  home.stateVersion = "25.05";

  programs.tailcache = {
    enable = true;
    server = secrets.server;
    cacheUrl = secrets.cacheUrl;
    publicKeys = secrets.publicKeys;
    # The agent (agent.enable, agent.reseed) is the template's; set either here to differ.
    # Substitute each new generation of this user's home-manager target in the background,
    # so that `tailcache switch --home` (and system-update) has nothing left to download.
    prefetch.enable = true;
    # autoSwitch = true;   # and activate it as well
    atuin.enable = true;
    # atuin.selfHosted = true;   # the build server runs the Atuin server (services.tailcache.server.atuin)
  };

  services.bootstrap-services = {
    enable = true;
    # The other machines' Syncthing ids; folders skip devices not listed here.
    syncthing.devices = secrets.syncthingDevices;
    # Example override: keep the template's devices for documents, move its path.
    # folders.documents.path = "/data/documents";
  };
}
