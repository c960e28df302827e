"""One module per endpoint family: validate -> build prompts -> engine -> response."""
