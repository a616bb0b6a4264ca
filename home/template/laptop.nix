# tailcache laptop template: documents (~/Documents) and notes (~/Notes), shared with the desktop
# and the server; Tailscale accepts subnet routes, no Tailscale SSH. The agent fetches
# from peers but does not reseed (battery, hotel wifi).
# home.nix imports this file. What the template sets are defaults, which home.nix overrides.
{
  programs.tailcache.template = "laptop";
  services.bootstrap-services.template = "laptop";
}
