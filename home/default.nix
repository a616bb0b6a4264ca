# home-manager modules of tailcache: `programs.tailcache` (the client, nix.settings, the agent,
# Atuin, system-update) and `services.bootstrap-services` (Syncthing and Tailscale defaults from
# a machine template). The flake exports this as homeModules.default (and homeManagerModules.default).
{
  imports = [
    ./tailcache.nix
    ./bootstrap-services.nix
  ];
}
