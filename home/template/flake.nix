# A home-manager flake for one machine, from one of tailcache's templates (laptop, desktop,
# server; the one of laptop.nix, desktop.nix and server.nix beside this file says which):
# made by `nix flake init -t github:tailcache/tailcache#<template>` or by
# `tailcache bootstrap-new-machine --template <template>`. The machine's user, home directory
# and system are set below. secrets.nix (server addresses, keys, Syncthing ids) is git-ignored
# (after `nix flake init`, copy secrets.example.nix to it and fill it in), so apply with a
# `path:` reference, which includes untracked files:
#   home-manager switch --flake path:.#<user>
# On NixOS, bootstrap-new-machine --nixos also writes nixos-client.nix (the system side),
# exported below as nixosModules.default.
{
  description = "Home configuration of one machine (a tailcache template)";

  # One line per input; tailcache and home-manager use this flake's nixpkgs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
  inputs.home-manager.url = "github:nix-community/home-manager";
  inputs.home-manager.inputs.nixpkgs.follows = "nixpkgs";
  inputs.tailcache.url = "github:tailcache/tailcache";
  inputs.tailcache.inputs.nixpkgs.follows = "nixpkgs";
  inputs.tailcache.inputs.home-manager.follows = "home-manager";

  outputs =
    {
      nixpkgs,
      home-manager,
      tailcache,
      ...
    }:
    let
      user = "me";
      homeDirectory = "/home/${user}";
      system = "x86_64-linux";
    in
    {
      homeConfigurations.${user} = home-manager.lib.homeManagerConfiguration {
        pkgs = nixpkgs.legacyPackages.${system};
        extraSpecialArgs = { inherit tailcache user homeDirectory; };
        modules = [ ./home.nix ];
      };
    };
}
