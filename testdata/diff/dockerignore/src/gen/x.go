src/gen/x.go
