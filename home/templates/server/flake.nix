# tailcache server template (`nix flake init -t github:tailcache/tailcache#server`): a
# home-manager flake for this machine. Set `user` and `system` below, copy
# secrets.example.nix to secrets.nix (git-ignored) and fill it in, then apply with a `path:`
# reference, which includes the untracked secrets.nix:
#   home-manager switch --flake path:.#<user>
{
  description = "Home configuration (tailcache server template)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    home-manager = {
      url = "github:nix-community/home-manager";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    tailcache = {
      url = "github:tailcache/tailcache";
      inputs.nixpkgs.follows = "nixpkgs";
      inputs.home-manager.follows = "home-manager";
    };
  };

  outputs =
    {
      nixpkgs,
      home-manager,
      tailcache,
      ...
    }:
    let
      user = "me";
      system = "x86_64-linux";
    in
    {
      homeConfigurations.${user} = home-manager.lib.homeManagerConfiguration {
        pkgs = nixpkgs.legacyPackages.${system};
        extraSpecialArgs = { inherit tailcache user; };
        modules = [ ./home.nix ];
      };
    };
}
