module github.com/big-red-button/brb/sdk/go

go 1.19
