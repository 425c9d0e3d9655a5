// oidc-provider: the OpenID provider the tests sign in against, on loopback.
//
// It is the example OpenID provider of github.com/zitadel/oidc/v3 (an OpenID Certified
// library): its in-memory storage, its login and device-verification pages, its token,
// refresh (rotating: a refresh token is deleted when it is used) and revocation endpoints.
// This file only registers the public device client the tests use and adds two test knobs
// to the device grant. Built by .ci/oidc/build.sh into a cache outside the repository.
//
//	OIDC_PORT             listen port on 127.0.0.1 (required); the issuer is http://127.0.0.1:PORT/
//	OIDC_CLIENT_ID        public client (device_code + refresh_token grants), default oauth3-cli
//	OIDC_SLOW_DOWN_POLLS  answer the first N token polls of each device code with slow_down
//	OIDC_DEVICE_LIFETIME  device code lifetime (Go duration), default the library's 5m
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// deviceClient is the library's device client as a public client with the refresh_token grant.
type deviceClient struct{ *storage.Client }

func (deviceClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeDeviceCode, oidc.GrantTypeRefreshToken}
}
func (deviceClient) AuthMethod() oidc.AuthMethod { return oidc.AuthMethodNone }

// ApplicationType native: a public client, which the device token endpoint lets poll
// without credentials.
func (deviceClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeNative }

type testStorage struct {
	*storage.Storage
	users    storage.UserStore
	clientID string
	slowDown int
	lifetime time.Duration
	mu       sync.Mutex
	polls    map[string]int
}

func (s *testStorage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	if id == s.clientID {
		return deviceClient{c.(*storage.Client)}, nil
	}
	return c, nil
}

// CompleteDeviceAuthorization records the user's id as the subject (the example's device
// page passes the user name, which its userinfo and ID token lookups do not find).
func (s *testStorage) CompleteDeviceAuthorization(ctx context.Context, userCode, subject string) error {
	if u := s.users.GetUserByUsername(subject); u != nil {
		subject = u.ID
	}
	return s.Storage.CompleteDeviceAuthorization(ctx, userCode, subject)
}

// deviceRefresh is a refresh request of a token set the device grant issued: the example
// storage records no client for those, so it is the device client's.
type deviceRefresh struct {
	op.RefreshTokenRequest
	clientID string
}

func (r deviceRefresh) GetClientID() string { return r.clientID }

func (s *testStorage) TokenRequestByRefreshToken(ctx context.Context, refreshToken string) (op.RefreshTokenRequest, error) {
	req, err := s.Storage.TokenRequestByRefreshToken(ctx, refreshToken)
	if err != nil || req.GetClientID() != "" {
		return req, err
	}
	return deviceRefresh{req, s.clientID}, nil
}

func (s *testStorage) StoreDeviceAuthorization(ctx context.Context, clientID, deviceCode, userCode string, expires time.Time, scopes []string) error {
	if s.lifetime > 0 {
		expires = time.Now().Add(s.lifetime)
	}
	return s.Storage.StoreDeviceAuthorization(ctx, clientID, deviceCode, userCode, expires, scopes)
}

func (s *testStorage) GetDeviceAuthorizatonState(ctx context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	s.mu.Lock()
	s.polls[deviceCode]++
	n := s.polls[deviceCode]
	s.mu.Unlock()
	if n <= s.slowDown {
		// The library answers slow_down for a storage deadline.
		return nil, fmt.Errorf("poll %d of %s: %w", n, clientID, context.DeadlineExceeded)
	}
	return s.Storage.GetDeviceAuthorizatonState(ctx, clientID, deviceCode)
}

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	port := os.Getenv("OIDC_PORT")
	if port == "" {
		logger.Error("OIDC_PORT is required")
		os.Exit(2)
	}
	clientID := os.Getenv("OIDC_CLIENT_ID")
	if clientID == "" {
		clientID = "oauth3-cli"
	}
	slowDown, _ := strconv.Atoi(os.Getenv("OIDC_SLOW_DOWN_POLLS"))
	var lifetime time.Duration
	if v := os.Getenv("OIDC_DEVICE_LIFETIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			logger.Error("OIDC_DEVICE_LIFETIME", "error", err)
			os.Exit(2)
		}
		lifetime = d
	}
	issuer := fmt.Sprintf("http://127.0.0.1:%s/", port)
	storage.RegisterClients(storage.DeviceClient(clientID, ""))
	users := storage.NewUserStore(issuer)
	st := &testStorage{
		Storage:  storage.NewStorage(users),
		users:    users,
		clientID: clientID,
		slowDown: slowDown,
		lifetime: lifetime,
		polls:    map[string]int{},
	}
	router := exampleop.SetupServer(issuer, st, logger, false)
	logger.Info("listening", "issuer", issuer)
	server := &http.Server{Addr: "127.0.0.1:" + port, Handler: router, ReadHeaderTimeout: 10 * time.Second}
	if err := server.ListenAndServe(); err != nil {
		logger.Error("server", "error", err)
		os.Exit(1)
	}
}
