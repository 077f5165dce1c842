package liqo

import (
	"context"
	"errors"
	"fmt"

	"github.com/apiproxy/apiproxy/pkg/remap"
)

// Stage is the part of the path computation an error belongs to: `kubectl apiproxy check` prints
// one hop per stage, from the same errors get-ip and connect report.
type Stage string

// The stages, in the order Resolve meets them.
const (
	// StageLiqo: Liqo's CRDs served, the clusters' IDs known.
	StageLiqo Stage = "liqo"
	// StageIP: the provider's IP object and its remapped status.
	StageIP Stage = "ip"
	// StageConfiguration: the consumer's Configuration for the provider, with its status set.
	StageConfiguration Stage = "configuration"
	// StageCondition: the Configuration's NetworkCIDRsConfigured condition (Liqo v1.2.0 and later).
	StageCondition Stage = "condition"
	// StageAddress: the remap into the consumer's CIDR.
	StageAddress Stage = "address"
)

// StageError tags an error of Resolve or Preflight with its stage.
type StageError struct {
	Stage Stage
	Err   error
}

func (e *StageError) Error() string { return e.Err.Error() }
func (e *StageError) Unwrap() error { return e.Err }

// StageOf is the stage an error of Resolve or Preflight belongs to ("" for other errors).
func StageOf(err error) Stage {
	var se *StageError
	if errors.As(err, &se) {
		return se.Stage
	}
	return ""
}

// staged tags err with def, except that a CRD not served or a cluster ID problem always belongs
// to StageLiqo and a failed remap to StageAddress, whichever step met it.
func staged(def Stage, err error) error {
	if err == nil {
		return nil
	}
	var se *StageError
	if errors.As(err, &se) {
		return err
	}
	switch {
	case errors.Is(err, ErrNotServed), errors.Is(err, ErrClusterID):
		def = StageLiqo
	case errors.Is(err, remap.ErrPrefixLengthMismatch), errors.Is(err, remap.ErrFamilyMismatch), errors.Is(err, remap.ErrOutside):
		def = StageAddress
	}
	return &StageError{Stage: def, Err: err}
}

// Preflight is what `check` verifies before the address computation: Liqo's CRDs are served and the
// cluster IDs are known.
type Preflight struct {
	ProviderClusterID, ProviderClusterIDSource string
	ConsumerClusterID, ConsumerClusterIDSource string
}

// CheckLiqo verifies that the provider serves IPs and has a cluster ID, and (with a consumer) that
// the consumer serves Configurations and has a cluster ID; flags in req stand in for the IDs.
// Errors are StageLiqo.
func CheckLiqo(ctx context.Context, req Request) (*Preflight, error) {
	if req.Namespace == "" {
		req.Namespace = DefaultNamespace
	}
	p := &Preflight{}
	if err := servedError(req.Provider, IPResource, "IP", "(the provider is the current context)"); err != nil {
		return p, staged(StageLiqo, err)
	}
	p.ProviderClusterID, p.ProviderClusterIDSource = req.ProviderClusterID, "flag --local-cluster-id"
	if p.ProviderClusterID == "" {
		id, src, err := clusterID(ctx, req.Provider, req.Namespace, "--local-cluster-id")
		if err != nil {
			return p, staged(StageLiqo, err)
		}
		p.ProviderClusterID, p.ProviderClusterIDSource = id, src
	}
	if req.Consumer == nil {
		return p, nil
	}
	if err := servedError(req.Consumer, ConfigurationResource, "Configuration", "(the consumer is --remote)"); err != nil {
		return p, staged(StageLiqo, err)
	}
	p.ConsumerClusterID, p.ConsumerClusterIDSource = req.ConsumerClusterID, "flag --remote-cluster-id"
	if p.ConsumerClusterID == "" {
		id, src, err := clusterID(ctx, req.Consumer, req.Namespace, "--remote-cluster-id")
		if err != nil {
			return p, staged(StageLiqo, err)
		}
		p.ConsumerClusterID, p.ConsumerClusterIDSource = id, src
	}
	return p, nil
}

func (p *Preflight) String() string {
	s := fmt.Sprintf("provider cluster ID %s (%s)", p.ProviderClusterID, p.ProviderClusterIDSource)
	if p.ConsumerClusterID != "" {
		s += fmt.Sprintf(", consumer cluster ID %s (%s)", p.ConsumerClusterID, p.ConsumerClusterIDSource)
	}
	return s
}
