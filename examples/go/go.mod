module github.com/big-red-button/brb/examples/go

go 1.19

require github.com/big-red-button/brb/sdk/go v0.0.0

replace github.com/big-red-button/brb/sdk/go => ../../sdk/go
