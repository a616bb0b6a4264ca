# A machine's home-manager flake (what `tailcache bootstrap-new-machine` writes, or a flake
# template) evaluated the way `home-manager switch --flake` uses it, with stand-ins for its
# inputs: the one configuration it defines, the system it is for, and what its home.nix sets
# given the arguments the flake passes. tests/nix_modules.rs and tests/bootstrap.rs use it:
#   import tests/nix/machine.nix { dir = /path/to/flake; tailcache = { homeManagerModules… }; }
#   → { name = "alice"; system = "x86_64-linux"; home = { home.username = …; … }; }
{
  # The directory holding flake.nix, home.nix and secrets.nix.
  dir,
  # What home.nix gets as the tailcache flake.
  tailcache,
}:
let
  outputs = (import (dir + "/flake.nix")).outputs {
    nixpkgs.legacyPackages = builtins.listToAttrs (
      map
        (system: {
          name = system;
          value = { inherit system; };
        })
        [
          "x86_64-linux"
          "aarch64-linux"
        ]
    );
    home-manager.lib.homeManagerConfiguration = args: args;
    inherit tailcache;
  };
  names = builtins.attrNames outputs.homeConfigurations;
  name = builtins.head names;
  config = outputs.homeConfigurations.${name};
in
assert builtins.length names == 1;
assert config.modules == [ (dir + "/home.nix") ];
{
  inherit name;
  inherit (config.pkgs) system;
  home = import (dir + "/home.nix") config.extraSpecialArgs;
}
