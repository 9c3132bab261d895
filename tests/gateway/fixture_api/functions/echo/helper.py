NAME = "helper-beside-app"
