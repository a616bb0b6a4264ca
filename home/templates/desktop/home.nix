# tailcache desktop template: documents, notes and photos (~/Pictures, shared with the server only);
# Tailscale accepts routes and runs Tailscale SSH. The agent reseeds what it fetched.
# Any template value can be overridden field by field below; the rest of the field's folder
# is kept (setting folders.documents.path keeps folders.documents.devices).
{
  tailcache,
  user,
  homeDirectory,
  ...
}:
let
  secrets = import ./secrets.nix;
in
{
  imports = [ tailcache.homeModules.default ];

  home.username = user;
  home.homeDirectory = homeDirectory;
  home.stateVersion = "25.05";

  programs.tailcache = {
    enable = true;
    server = secrets.server;
    cacheUrl = secrets.cacheUrl;
    publicKeys = secrets.publicKeys;
    agent.enable = true;
    agent.reseed = true;
    # Substitute each new generation of this user's home-manager target in the background,
    # so that `tailcache switch --home` (and system-update) has nothing left to download.
    prefetch.enable = true;
    # autoSwitch = true;   # and activate it as well
    atuin.enable = true;
    # atuin.selfHosted = true;   # the build server runs the Atuin server (services.tailcache.server.atuin)
  };

  services.bootstrap-services = {
    enable = true;
    template = "desktop";
    # The other machines' Syncthing ids; folders skip devices not listed here.
    syncthing.devices = secrets.syncthingDevices;
    # Example override: keep the template's devices for documents, move its path.
    # folders.documents.path = "/data/documents";
  };
}
