# The tailcache flake: the package (tailcache, bt, bs, bl with completions and man pages), its
# overlay, the NixOS server and client modules, the home-manager client modules, machine
# templates, the checks (module evaluation, the Nix library's tests, the NixOS VM test) and a
# dev shell.
{
  description = "Build server and Nix binary cache for a person's machines on a tailnet";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    home-manager = {
      url = "github:nix-community/home-manager";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      home-manager,
    }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        nixpkgs.lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.tailcache;
        tailcache = pkgs.tailcache;
      });

      overlays.default = final: _prev: {
        tailcache = final.callPackage ./nix/package.nix { };
      };

      # The package of each module defaults to pkgs.tailcache (this overlay) or, without the
      # overlay, the same package built with the machine's nixpkgs.
      nixosModules = {
        # services.tailcache.server: the build server and binary cache.
        default = ./nixos;
        server = ./nixos;
        # services.tailcache.client: a machine that takes what the server built.
        client = ./nixos/client.nix;
      };

      # programs.tailcache and services.bootstrap-services. home-manager now looks for
      # `homeModules`; `homeManagerModules` is the older name, kept for configurations using it.
      homeModules = {
        default = ./home;
        tailcache = ./home/tailcache.nix;
        services = ./home/bootstrap-services.nix;
      };
      homeManagerModules = self.homeModules;

      # The per-machine flake that `tailcache bootstrap-new-machine` writes, rendered with
      # example values from its one source, cli/src/bootstrap/*.in, into one directory
      # (tests/nix_modules.rs checks that it matches, and what `nix flake init` makes of it):
      # each template is that directory with only its own <template>.nix beside the shared
      # files.
      templates =
        builtins.mapAttrs
          (name: description: {
            inherit description;
            path = (import ./nix/lib.nix).templateSource ./home/template name;
          })
          {
            laptop = "home-manager flake for a laptop: documents and notes synced, agent without reseeding";
            desktop = "home-manager flake for a desktop: documents, notes and photos synced, agent reseeding";
            server = "home-manager flake for the always-on server: the hub of every folder, no agent";
          };

      checks = forAllSystems (
        pkgs:
        import ./nix/checks.nix {
          inherit pkgs self home-manager;
          nixpkgsLib = nixpkgs.lib;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.tailcache ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nix
            pkgs.git
            pkgs.curl
            pkgs.xz
            pkgs.zstd
            pkgs.tmux
            pkgs.prometheus
            pkgs.chromium
          ];
        };
      });
    };
}
